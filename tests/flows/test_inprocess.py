"""Trials given as Python function objects (lambdas, closures, notebook functions).

Those run on threads of the flow's process; a function a fresh process can import by name is
turned into ``module:function`` and runs as a process like any command.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from flowkit import make_spec
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import SpecError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.spec import load_spec
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState
from prefect_hpo.trial import get_params, report


def _experiment(name: str):  # noqa: ANN202
    store = open_store("file://ckpt")
    return ExperimentState.from_json(store.read(name), name).experiment


def test_a_closure_runs_in_process_with_its_reports(workspace: Path) -> None:
    offset = 0.25  # a closure: no fresh process could import this function
    threads: set[str] = set()

    def objective(params: dict) -> float:
        threads.add(threading.current_thread().name)
        assert get_params() == params  # get_params() works in-process too
        for step in range(3):
            report(step=step, loss=10.0 - step, lr_seen=params["x"])
        return (params["x"] - offset) ** 2 + (params["y"] - 0.5) ** 2

    best = hpo_flow(spec=make_spec("closure", budget={"trials": 4, "max_parallel": 2}, trial={"callable": objective, "command": None}))
    exp = _experiment("closure")
    assert [t.status.value for t in exp.trials] == ["completed"] * 4
    assert best is not None and best["values"]["loss"] == min(t.values["loss"] for t in exp.trials)
    assert threads and all(name.startswith("trial-") for name in threads)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    run_id = exp.trial(0).metadata["run_id"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps[:3] == [0, 1, 2] and len(steps) == 4  # the three reports, then the returned value


def test_in_process_failures_and_timeouts_are_recorded(workspace: Path) -> None:
    def objective(params: dict) -> float:
        if params["mode"] == "raise":
            raise ValueError("diverged at epoch 3")
        if params["mode"] == "slow":
            time.sleep(3)
        return 1.0

    spec = make_spec(
        "inproc-faults",
        parameters=[{"name": "mode", "type": "choice", "values": ["ok", "raise", "slow"]}],
        algorithm="grid",
        budget={"trials": 3, "max_parallel": 3},
        trial={"callable": objective, "command": None, "timeout_s": 0.5},
    )
    hpo_flow(spec=spec)
    by_mode = {t.params["mode"]: t for t in _experiment("inproc-faults").trials}
    assert by_mode["ok"].status.value == "completed"
    assert by_mode["raise"].status.value == "failed" and "ValueError: diverged at epoch 3" in by_mode["raise"].failure_reason
    assert by_mode["slow"].status.value == "failed" and "timed out" in by_mode["slow"].failure_reason


def test_resuming_an_in_process_experiment_by_name_says_what_to_do(workspace: Path) -> None:
    hpo_flow(spec=make_spec("inproc-resume", budget={"trials": 1, "max_parallel": 1}, trial={"callable": lambda p: 1.0, "command": None}))
    with pytest.raises(SpecError, match="resume from Python"):
        hpo_flow(name="inproc-resume", storage="file://ckpt", resume=True)


def test_an_importable_function_object_runs_as_a_process(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "objmod.py").write_text(
        "import os\nfrom prefect_hpo.trial import report\n"
        "def objective(params):\n    report(step=0, pid=os.getpid())\n    return params['x'] ** 2\n"
    )
    monkeypatch.syspath_prepend(str(workspace))
    import objmod

    spec = load_spec(make_spec("by-name", budget={"trials": 2, "max_parallel": 1}, trial={"callable": objmod.objective, "command": None}))
    assert spec.trial.callable == "objmod:objective" and not spec.trial.in_process
    hpo_flow(spec=spec.to_dict())
    exp = _experiment("by-name")
    assert [t.status.value for t in exp.trials] == ["completed"] * 2
    pids = {int(r["metrics"]["pid"]) for t in exp.trials for r in t.metadata["history"] if "pid" in r["metrics"]}
    assert pids and os.getpid() not in pids  # each trial ran in a process of its own


def test_a_stopped_in_process_trial_unwinds_at_its_next_report(workspace: Path) -> None:
    """A thread cannot be killed: the threshold policy's stop reaches it as TrialStopped."""
    from prefect_hpo.trial import TrialStopped

    unwound: list[int] = []

    def objective(params: dict) -> float:
        try:
            for step in range(1, 60):
                report(step=step, loss=5.0 if params["x"] > 0.5 else 0.1)  # x > 0.5: hopeless
                time.sleep(0.05)
        except TrialStopped:
            unwound.append(step)
            raise
        return 0.1

    spec = make_spec(
        "inproc-stop",
        parameters=[{"name": "x", "type": "choice", "values": [0.2, 0.9]}],
        algorithm="grid",
        budget={"trials": 2, "max_parallel": 2},
        trial={"callable": objective, "command": None},
        stopping={"policy": "threshold", "threshold": 1.0, "min_steps": 2},
    )
    hpo_flow(spec=spec)
    exp = _experiment("inproc-stop")
    by_x = {t.params["x"]: t for t in exp.trials}
    assert by_x[0.2].status.value == "completed"
    stopped = by_x[0.9]
    assert stopped.status.value == "early_stopped" and stopped.failure_reason.startswith("threshold on loss: ")
    assert stopped.values == {"loss": 5.0}
    assert len(unwound) == 1 and unwound[0] < 59, "the thread ran on instead of stopping"
