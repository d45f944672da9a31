"""Trials as Prefect tasks on a local Dask cluster (prefect-dask's DaskTaskRunner), for real:
a two-worker cluster started by the launcher, trials running in the Dask worker processes,
reports reaching the flow through MLflow, and a stopping policy ending trials cooperatively."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from flowkit import events, make_spec
from processes import gone
from mlflow.tracking import MlflowClient

from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytest.importorskip("prefect_dask")
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]


def _state(name: str) -> ExperimentState:
    text = open_store("file://ckpt").read(name)
    assert text is not None
    return ExperimentState.from_json(text, name)


def test_trials_run_as_tasks_on_dask_workers(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAL_STEPS", "3")
    spec = make_spec("dask", budget={"trials": 4, "max_parallel": 2}, trial={"dask": {"n_workers": 2}})
    best = hpo_flow(spec=spec)
    exp = _state("dask").experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * 4
    assert best is not None and best["index"] == exp.best_trial.index
    assert {t.metadata["handle"] is None for t in exp.trials} == {True}
    log = events(workspace)
    assert Counter(i for kind, i, _, _ in log if kind == "end") == Counter(range(4))
    assert os.getpid() not in {pid for _, _, _, pid in log}
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    for trial in exp.trials:
        history = client.get_metric_history(trial.metadata["run_id"], "loss")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]  # logged once, by the task
        assert trial.values["loss"] == pytest.approx(max(history, key=lambda m: m.step).value)


def test_a_stopping_policy_ends_dask_trials(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAL_STEPS", "60")
    monkeypatch.setenv("TRIAL_SLEEP", "0.5")
    spec = make_spec(
        "dask-stop", budget={"trials": 2, "max_parallel": 2}, trial={"dask": {"n_workers": 2}},
        stopping={"policy": "threshold", "threshold": 0.0, "min_steps": 1},
    )
    hpo_flow(spec=spec)
    exp = _state("dask-stop").experiment
    assert [t.status.value for t in exp.trials] == ["early_stopped"] * 2
    log = events(workspace)
    assert not [e for e in log if e[0] == "end"]
    for _, _, _, pid in (e for e in log if e[0] == "start"):
        assert gone(pid)


def test_gpu_trials_only_run_where_a_worker_has_a_free_gpu(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers with two threads each could run four trials at once, but each declares one
    "GPU" (a Dask resource: no device exists here, nor is one needed to count) and each trial
    asks for one, so never more than two run together and all of them still finish."""
    monkeypatch.setenv("TRIAL_STEPS", "3")
    monkeypatch.setenv("TRIAL_SLEEP", "0.3")
    spec = make_spec(
        "dask-gpu", budget={"trials": 4, "max_parallel": 4},
        trial={"gpus_per_trial": 1, "dask": {"n_workers": 2, "threads_per_worker": 2, "worker_resources": {"GPU": 1}}},
    )
    hpo_flow(spec=spec)
    exp = _state("dask-gpu").experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * 4
    running = most = 0
    for kind, _, _, _ in events(workspace):  # in the order the trials wrote them
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2


API_PROBE = """
import os, sys
from prefect_hpo.trial import report
open(os.path.join(os.environ["TRIAL_EVENTS_DIR"], "api-" + os.environ["PREFECT_HPO_TRIAL_INDEX"]), "w").write(
    os.environ.get("PREFECT_API_URL", ""))
report(loss=float(os.environ["PREFECT_HPO_TRIAL_INDEX"]))
"""


def test_dask_workers_use_the_flows_prefect_api(workspace: Path, prefect_api: str) -> None:
    """Workers of the launcher's local cluster run their task runs against the flow's own API
    instead of each booting a temporary Prefect server (which timed out under load and crashed
    the flow). The trial processes inherit the worker's environment, so they can tell."""
    import sys

    (workspace / "probe.py").write_text(API_PROBE)
    spec = make_spec("dask-api", budget={"trials": 2, "max_parallel": 2},
                     trial={"command": f"{sys.executable} probe.py", "dask": {"n_workers": 2}})
    hpo_flow(spec=spec)
    assert [t.status.value for t in _state("dask-api").experiment.trials] == ["completed"] * 2
    assert {(workspace / f"api-{i}").read_text() for i in range(2)} == {prefect_api}


KILL_MY_WORKER = """
import os, signal
pid = os.getpid()
while pid > 1:  # up to the Dask worker process that runs this trial's task
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read():
        os.kill(pid, signal.SIGKILL)
        break
"""


def test_a_dask_worker_that_dies_fails_its_trial_not_the_experiment(workspace: Path) -> None:
    """An infrastructure error on the worker's side (here the worker process is killed under its
    task, and the scheduler gives up on the task: KilledWorker) fails that trial with the reason;
    the flow goes on and ends normally."""
    import sys

    import dask

    (workspace / "kill_worker.py").write_text(KILL_MY_WORKER)
    spec = make_spec("dask-dies", budget={"trials": 2, "max_parallel": 1},
                     trial={"command": f"{sys.executable} kill_worker.py", "retries": 0, "dask": {"n_workers": 1}})
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        hpo_flow(spec=spec)
    exp = _state("dask-dies").experiment
    assert [t.status.value for t in exp.trials] == ["failed"] * 2
    assert all("Dask worker" in (t.failure_reason or "") for t in exp.trials), [t.failure_reason for t in exp.trials]
