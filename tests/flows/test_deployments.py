"""deployments/prefect.yaml against a real Prefect server, process work pool and worker.

`prefect server start` on 127.0.0.1, `prefect deploy` of the shipped prefect.yaml, a process
worker, and `prefect deployment run` with a parameter: the HPO flow runs as the worker's flow
run and its experiment lands in the checkpoint store. The worker ignores SIGTERM and the first
SIGINT (see ../shared/ENVIRONMENT.md), so it is stopped with two SIGINTs by its PID.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from serverkit import copy_checkout, prefect_cli, prefect_server, start_worker, stop_worker  # noqa: F401

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]


def test_the_shipped_deployments_run_on_a_process_worker(prefect_server: dict[str, str], tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")  # the run's .prefect-hpo and mlflow.db stay out of the repo
    env = {**prefect_server, "PWD": str(checkout)}  # prefect.yaml's pull step is "{{ $PWD }}" at deploy time

    prefect_cli(env, checkout, "work-pool", "create", "hpo-process", "--type", "process")
    prefect_cli(env, checkout, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    listing = prefect_cli(env, checkout, "deployment", "inspect", "prefect-hpo/nightly-quickstart")
    assert "0 2 * * *" in listing

    worker = start_worker(env, checkout, "hpo-process", tmp_path / "worker.log")
    try:
        prefect_cli(env, checkout, "deployment", "run", "prefect-hpo/quickstart", "--param", "spec=examples/shell.yaml")
        store = open_store(f"file://{checkout / '.prefect-hpo'}")
        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline:
            text = store.read("shell-example")
            if text is not None:
                state = ExperimentState.from_json(text, "shell-example")
                if sum(t.status.is_terminal for t in state.experiment.trials) == state.spec.budget.trials:
                    break
            time.sleep(1)
        assert state is not None, "the deployment's flow run never wrote a checkpoint"
        assert [t.status.value for t in state.experiment.trials] == ["completed"] * state.spec.budget.trials
    finally:
        stop_worker(worker)


#: Reads the deployment's flow runs through Prefect's client, in the server's environment.
_FLOW_RUNS = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name(sys.argv[1])
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    print(json.dumps([{"name": r.name, "state": r.state_type.value if r.state_type else None,
                       "auto_scheduled": r.auto_scheduled, "parameters": r.parameters} for r in runs]))
"""


def _flow_runs(env: dict[str, str], cwd: Path, deployment: str) -> list[dict]:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FLOW_RUNS, deployment], cwd=cwd, env=env, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_scheduled_deployment_gets_flow_runs_that_complete_on_a_worker(tmp_path: Path) -> None:
    """The nightly deployment of the shipped prefect.yaml, with its cron replaced by a 5 s interval:
    the server's scheduler must create flow runs by itself (it silently created none with
    SQLAlchemy 2.1, whose bulk inserts Prefect 3.8.8's scheduler cannot make) and the worker must
    run one of them to a completed experiment named with the run's date."""
    import yaml
    from serverkit import running_server

    checkout = copy_checkout(tmp_path / "checkout")
    shipped = yaml.safe_load((checkout / "deployments" / "prefect.yaml").read_text())
    nightly = next(d for d in shipped["deployments"] if d["name"] == "nightly-quickstart")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["active"] is True
    nightly["schedules"] = [{"interval": 5, "active": True}]
    nightly["parameters"] = {**nightly["parameters"], "spec": "examples/shell.yaml"}
    shipped["deployments"] = [nightly]
    (checkout / "scheduled.yaml").write_text(yaml.safe_dump(shipped))

    # the scheduler looks for deployments to schedule every 60 s by default; 2 s keeps the test short
    with running_server(tmp_path, {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}) as server_env:
        env = {**server_env, "PWD": str(checkout)}
        prefect_cli(env, checkout, "work-pool", "create", "hpo-process", "--type", "process")
        prefect_cli(env, checkout, "--no-prompt", "deploy", "--prefect-file", "scheduled.yaml", "--all")
        # one flow run at a time, as nightly runs are: the 5 s interval would otherwise start a
        # new experiment process every 5 s, and on 2 busy cores the first one then takes minutes
        worker = start_worker(env, checkout, "hpo-process", tmp_path / "worker.log", limit=1)
        try:
            deadline = time.monotonic() + 200
            runs: list[dict] = []
            while time.monotonic() < deadline:
                runs = _flow_runs(env, checkout, "prefect-hpo/nightly-quickstart")
                if any(r["state"] == "COMPLETED" for r in runs):
                    break
                time.sleep(2)
        finally:
            stop_worker(worker)
    assert runs, "the scheduler created no flow run for the scheduled deployment"
    assert all(r["auto_scheduled"] for r in runs), runs
    done = [r for r in runs if r["state"] == "COMPLETED"]
    assert done, f"no scheduled flow run completed on the worker: {[(r['name'], r['state']) for r in runs]}\n" + (
        tmp_path / "worker.log").read_text()[-3000:]
    names = open_store(f"file://{checkout / '.prefect-hpo'}").list_names()
    assert len(names) == 1 and names[0].startswith("shell-example-"), names
    text = open_store(f"file://{checkout / '.prefect-hpo'}").read(names[0])
    state = ExperimentState.from_json(text, names[0])
    assert [t.status.value for t in state.experiment.trials] == ["completed"] * state.spec.budget.trials
