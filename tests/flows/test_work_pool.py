"""Trials as flow runs of the trial deployment on a real process work pool and worker.

A `prefect server start` on 127.0.0.1, the shipped deployments/prefect.yaml deployed to a
`process` pool, a `prefect worker start` subprocess: every trial of the experiment is a flow run
that the worker starts; its reports reach the HPO flow through the trial's MLflow run. The HPO
driver is SIGKILLed while trial flow runs are running, and `prefect-hpo resume` must re-attach to
them (each trial starts exactly once), with every MLflow metric logged once. A stopping policy
cancels the flow runs of the trials it stops, and their processes are really gone.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from flowkit import TRIAL_PROGRAM, events, make_spec
from mlflow.tracking import MlflowClient
from serverkit import copy_checkout, prefect_cli, prefect_server, start_worker, stop_worker  # noqa: F401

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DEPLOYMENT = "prefect-hpo-trial/process"


def _state(storage: str, name: str) -> ExperimentState | None:
    text = open_store(storage).read(name)
    return None if text is None else ExperimentState.from_json(text, name)


def _trial_flow_runs(env: dict[str, str], name: str) -> Counter:
    """State of every flow run of the trial deployment tagged with this experiment, by the API."""
    code = (
        "import json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags\n"
        "with get_client(sync_client=True) as c:\n"
        f"    runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=['prefect-hpo:{name}'])))\n"
        "    print(json.dumps([r.state.type.value for r in runs]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    return Counter(json.loads(out.stdout.strip().splitlines()[-1]))


def _spec(workspace: Path, name: str, steps: int = 4, **overrides: object) -> Path:
    spec = make_spec(
        name,
        storage=f"file://{workspace / 'ckpt'}",
        tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
        trial={
            "command": f"{shlex.quote(sys.executable)} {workspace / 'trial.py'}",
            "timeout_s": 120,
            "poll_interval_s": 0.5,
            # travels with the flow run's parameters: the worker's own environment lacks it
            "env": {"TRIAL_EVENTS_DIR": str(workspace), "TRIAL_SLEEP": "1.0", "TRIAL_STEPS": str(steps)},
            "work_pool": {"deployment": DEPLOYMENT},
        },
        **overrides,
    )
    path = workspace / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def test_trials_run_on_a_process_worker_and_a_killed_driver_reattaches(prefect_server: dict[str, str], tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "trial.py").write_text(TRIAL_PROGRAM)
    (tmp_path / "tmp").mkdir()
    env = {**prefect_server, "PWD": str(checkout), "TMPDIR": str(tmp_path / "tmp")}
    prefect_cli(env, checkout, "work-pool", "create", "hpo-process", "--type", "process")
    prefect_cli(env, checkout, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    worker = start_worker(env, checkout, "hpo-process", tmp_path / "worker.log")
    storage = f"file://{workspace / 'ckpt'}"
    try:
        budget = 4
        spec = _spec(workspace, "wp", budget={"trials": budget, "max_parallel": 2})
        driver = subprocess.Popen(
            [sys.executable, "-m", "prefect_hpo.cli", "run", str(spec), "--quiet"],
            cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                assert driver.poll() is None, f"the driver exited early:\n{driver.stdout.read() if driver.stdout else ''}"
                assert time.monotonic() < deadline, "no trial completed with another one running in time"
                state = _state(storage, "wp")
                if state is not None:
                    statuses = Counter(t.status.value for t in state.experiment.trials)
                    started = {i for kind, i, _, _ in events(workspace) if kind == "start"}
                    running = [t for t in state.experiment.trials if t.status.value == "running" and t.index in started]
                    if statuses["completed"] >= 1 and running:
                        break
                time.sleep(0.2)
        finally:
            driver.kill()
            driver.wait(timeout=30)
        handles = [t.metadata.get("handle") for t in state.experiment.trials if t.status.value == "running"]
        assert all(h and h["kind"] == "work_pool" and h["flow_run_id"] for h in handles), handles

        resumed = subprocess.run(
            [sys.executable, "-m", "prefect_hpo.cli", "resume", "wp", "--storage", storage, "--quiet"],
            cwd=workspace, env=env, capture_output=True, text=True, timeout=300,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

        final = _state(storage, "wp")
        assert final is not None
        exp = final.experiment
        assert [t.status.value for t in exp.trials] == ["completed"] * budget, [t.failure_reason for t in exp.trials]
        log = events(workspace)
        assert Counter(i for kind, i, _, _ in log if kind == "start") == Counter(range(budget)), log  # re-attached, never re-run
        assert Counter(i for kind, i, _, _ in log if kind == "end") == Counter(range(budget)), log
        assert _trial_flow_runs(env, "wp") == Counter({"COMPLETED": budget})

        client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
        for trial in exp.trials:
            run_id = trial.metadata["run_id"]
            history = client.get_metric_history(run_id, "loss")
            assert sorted(m.step for m in history) == [0, 1, 2, 3, 4], "each report logged once, by the trial flow"
            assert trial.values["loss"] == pytest.approx(max(history, key=lambda m: m.step).value)
            assert client.list_artifacts(run_id, "logs"), "the trial flow attaches the attempt's log"

        # A stopping policy stops every trial after its first step: the flow runs are cancelled
        # and the trial processes are gone.
        stop_spec = _spec(
            workspace, "wp-stop", steps=60, budget={"trials": 2, "max_parallel": 2},
            stopping={"policy": "threshold", "threshold": 0.0, "min_steps": 1},
        )
        before = len(events(workspace))
        run = subprocess.run(
            [sys.executable, "-m", "prefect_hpo.cli", "run", str(stop_spec), "--quiet"],
            cwd=workspace, env=env, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        stopped = _state(storage, "wp-stop")
        assert stopped is not None
        assert [t.status.value for t in stopped.experiment.trials] == ["early_stopped"] * 2
        new = events(workspace)[before:]
        assert not [e for e in new if e[0] == "end"], "a stopped trial ran to its end"
        for _, _, _, pid in (e for e in new if e[0] == "start"):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert _trial_flow_runs(env, "wp-stop") == Counter({"CANCELLED": 2})
    finally:
        stop_worker(worker)
