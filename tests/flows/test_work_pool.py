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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flowkit import TRIAL_PROGRAM, events, make_spec
from processes import gone
from mlflow.tracking import MlflowClient
from serverkit import copy_checkout, prefect_cli, running_server, start_worker, stop_worker

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(420)]

DEPLOYMENT = "prefect-hpo-trial/process"

QUOTA_TRIAL = """
import os, time
from prefect_hpo.trial import get_params, report
get_params()
log = os.path.join(os.environ["TRIAL_EVENTS_DIR"], "quota.log")
def mark(kind):
    with open(log, "a") as f:
        f.write(f"{kind} {os.environ['PREFECT_HPO_EXPERIMENT']} {os.environ['PREFECT_HPO_TRIAL_INDEX']} {time.time()}\\n")
mark("start")
time.sleep(3.0)
mark("end")
report(loss=1.0)
"""


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


@dataclass
class Pool:
    env: dict[str, str]  # talks to the server
    workspace: Path  # trial program, checkpoints, MLflow database


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """One server, the shipped deployments on a `process` pool, one worker: shared by the tests."""
    root = tmp_path_factory.mktemp("work-pool")
    checkout = copy_checkout(root / "checkout")
    (root / "tmp").mkdir()
    workspace = root / "ws"
    workspace.mkdir()
    (workspace / "trial.py").write_text(TRIAL_PROGRAM)
    with running_server(root) as server_env:
        env = {**server_env, "PWD": str(checkout), "TMPDIR": str(root / "tmp")}
        prefect_cli(env, checkout, "work-pool", "create", "hpo-process", "--type", "process")
        prefect_cli(env, checkout, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
        worker = start_worker(env, checkout, "hpo-process", root / "worker.log")
        try:
            yield Pool(env, workspace)
        finally:
            stop_worker(worker)


def test_trials_run_on_a_process_worker_and_a_killed_driver_reattaches(pool: Pool) -> None:
    env, workspace = pool.env, pool.workspace
    storage = f"file://{workspace / 'ckpt'}"
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
        assert gone(pid)
    assert _trial_flow_runs(env, "wp-stop") == Counter({"CANCELLED": 2})


def test_experiments_sharing_a_gpu_limit_never_run_more_gpus_together(pool: Pool) -> None:
    """Two experiments, each allowed 2 trials at once, share a concurrency limit of 2 "GPUs":
    together they never run more than 2 trials, and they do use both slots. (No GPU here: the
    limit counts gpus_per_trial, which is all this test needs; the devices are the pool's job.)"""
    env, workspace = pool.env, pool.workspace
    prefect_cli(env, workspace, "gcl", "create", "gpu-test", "--limit", "2")
    (workspace / "quota_trial.py").write_text(QUOTA_TRIAL)
    drivers = []
    for name in ("quota-a", "quota-b"):
        spec = make_spec(
            name,
            storage=f"file://{workspace / 'ckpt'}",
            tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
            budget={"trials": 3, "max_parallel": 2},
            trial={
                "command": f"{shlex.quote(sys.executable)} {workspace / 'quota_trial.py'}",
                "timeout_s": 120,
                "poll_interval_s": 0.5,
                "gpus_per_trial": 1,
                "env": {"TRIAL_EVENTS_DIR": str(workspace)},
                # a process pool has no GPU job variable; the limit is what is tested
                "work_pool": {"deployment": DEPLOYMENT, "gpu_variable": None, "concurrency_limit": "gpu-test"},
            },
        )
        path = workspace / f"{name}.json"
        path.write_text(json.dumps(spec))
        drivers.append(subprocess.Popen(
            [sys.executable, "-m", "prefect_hpo.cli", "run", str(path), "--quiet"],
            cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    for driver in drivers:
        out, _ = driver.communicate(timeout=360)
        assert driver.returncode == 0, out
    for name in ("quota-a", "quota-b"):
        state = _state(f"file://{workspace / 'ckpt'}", name)
        assert state is not None and [t.status.value for t in state.experiment.trials] == ["completed"] * 3

    marks = []
    for line in (workspace / "quota.log").read_text().splitlines():
        kind, experiment, index, at = line.split()
        marks.append((float(at), 0 if kind == "end" else 1, experiment, index))  # an end before a start at a tie
    running, most = 0, 0
    for _, starts, _, _ in sorted(marks):
        running += 1 if starts else -1
        most = max(most, running)
    assert len(marks) == 12
    assert most == 2, f"at most 2 GPUs' worth of trials at once, and both slots used; saw {most}"
