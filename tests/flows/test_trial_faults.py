"""Trials that cannot start: the flow records them failed with the reason and goes on, and a
resume neither crashes nor runs them again. Real flow runs (Prefect test server, MLflow on SQLite)."""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.spec import load_spec
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState
from flowkit import make_spec

pytestmark = pytest.mark.timeout(240)

# Trial 0 deletes its own working directory: every later launch there fails to start (the
# situation a reliability probe produced with a cwd that vanished, or never existed).
REMOVES_ITS_CWD = textwrap.dedent(
    """
    import os, shutil
    from prefect_hpo.trial import report
    if os.environ["PREFECT_HPO_TRIAL_INDEX"] == "0":
        shutil.rmtree(os.getcwd())
    report(loss=0.5)
    """
)


def _trials(name: str) -> list:
    store = open_store("file://ckpt")
    text = store.read(name)
    assert text is not None
    return ExperimentState.from_json(text, store.location(name)).experiment.trials


def test_a_trial_that_cannot_start_is_failed_and_the_experiment_goes_on(workspace: Path) -> None:
    (workspace / "gone.py").write_text(REMOVES_ITS_CWD)
    (workspace / "rundir").mkdir()
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(workspace / 'gone.py'))}"
    spec = make_spec("cwd-gone", budget={"trials": 3, "max_parallel": 1}, trial={"command": command, "cwd": "rundir"})

    best = hpo_flow(spec=spec)  # used to end in a TrialError traceback with trial 1 left "running"

    assert best is not None and best["index"] == 0
    trials = _trials("cwd-gone")
    assert [t.status.value for t in trials] == ["completed", "failed", "failed"]
    for trial in trials[1:]:
        assert trial.failure_reason.startswith("could not start:"), trial.failure_reason
        assert "rundir" in trial.failure_reason

    # a resume while the folder is still missing is refused up front, naming the field ...
    with pytest.raises(SpecError, match=r"trial\.cwd: 'rundir' does not exist"):
        hpo_flow(name="cwd-gone", storage="file://ckpt", resume=True)
    # ... and once it is back, the resume finishes without running anything again
    (workspace / "rundir").mkdir()
    again = hpo_flow(name="cwd-gone", storage="file://ckpt", resume=True)
    assert again is not None and again["index"] == 0
    assert [(t.status.value, t.metadata.get("attempt")) for t in _trials("cwd-gone")] == [
        ("completed", 1), ("failed", 1), ("failed", 1)
    ]


def test_a_missing_cwd_is_refused_before_any_trial_starts(workspace: Path) -> None:
    spec = make_spec("no-cwd", budget={"trials": 2, "max_parallel": 1}, trial={"cwd": "/nonexistent/dir"})
    with pytest.raises(SpecError, match=r"trial\.cwd: '/nonexistent/dir' does not exist"):
        hpo_flow(spec=spec)
    assert open_store("file://ckpt").read("no-cwd") is None  # nothing was started or written


def test_nul_bytes_in_trial_fields_are_refused_by_the_spec_naming_the_field() -> None:
    for trial, field in [
        ({"env": {"A": "x\0y"}}, "trial.env: A"),
        ({"env": {"A=B": "x"}}, "trial.env: 'A=B'"),
        ({"command": "python train.py\0 {x}"}, "trial.command"),
        ({"cwd": "run\0dir"}, "trial.cwd"),
    ]:
        with pytest.raises(SpecError, match=f"^spec: {field}.*"):
            load_spec(make_spec("nul", trial=trial))


def test_a_cwd_that_exists_only_where_remote_trials_run_is_accepted() -> None:
    """Work-pool and Dask trials run on other machines: their cwd is not looked for here."""
    pool = {"deployment": "prefect-hpo-trial/k8s"}
    for where in ({"work_pool": pool}, {"dask": {"address": "tcp://dask:8786"}}):
        spec = load_spec(make_spec("remote-cwd", trial={"cwd": "/only/in/the/pod", **where}))
        assert spec.trial.cwd == "/only/in/the/pod"
