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
