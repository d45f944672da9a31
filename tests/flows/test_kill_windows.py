"""A driver killed at each point of opening an experiment: every window ends with one MLflow parent
run and a `resume` or `run` that works.

The driver is the real CLI in a subprocess (against the session's Prefect server, MLflow on
SQLite) that SIGKILLs itself at one precise point of open_runtime: before the parent run exists,
after MLflow created it but before its spec.json was logged, and after the parent run is
complete but before the first checkpoint. Nothing is mocked: the kill is the fault injected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flowkit import make_spec
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import ExperimentNotFoundError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]  # real CLI runs, killed

_KILLED_AT = textwrap.dedent(
    """
    import os, signal, sys
    window, argv = sys.argv[1], sys.argv[2:]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if window == "before-parent-run":
        from prefect_hpo.storage.tracking import MlflowTracker
        MlflowTracker.start_experiment_run = die
    elif window == "parent-run-without-spec":  # MLflow created the run; its spec.json is next
        from mlflow.tracking import MlflowClient
        log_dict = MlflowClient.log_dict
        def log_dict_or_die(self, run_id, dictionary, artifact_file, *args, **kwargs):
            if artifact_file == "spec.json":
                die()
            return log_dict(self, run_id, dictionary, artifact_file, *args, **kwargs)
        MlflowClient.log_dict = log_dict_or_die
    elif window == "before-first-checkpoint":
        import prefect_hpo.flows.driver as driver
        driver.write_checkpoint = die
    from prefect_hpo.cli import main
    sys.exit(main(argv))
    """
)


def _run_killed(workspace: Path, prefect_api: str, window: str, *argv: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT, window, *argv], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, f"the driver was not killed where planned:\n{proc.stdout}\n{proc.stderr}"


def _parent_runs(workspace: Path, name: str) -> list[tuple[str, str, list[str]]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [(r.info.run_id, r.info.status, sorted(a.path for a in client.list_artifacts(r.info.run_id)))
            for r in runs if r.data.tags.get("prefect_hpo.role") == "experiment"]


def _checkpoint(name: str) -> ExperimentState:
    store = open_store("file://ckpt")
    text = store.read(name)
    assert text is not None
    return ExperimentState.from_json(text, store.location(name))


def _assert_one_finished_parent(workspace: Path, name: str, budget: int) -> None:
    parents = _parent_runs(workspace, name)
    assert len(parents) == 1, f"expected one parent run, found {parents}"
    run_id, status, artifacts = parents[0]
    assert status == "FINISHED" and {"spec.json", "search_space.json"} <= set(artifacts), parents
    state = _checkpoint(name)
    assert state.parent_run_id == run_id
    assert [t.status.value for t in state.experiment.trials] == ["completed"] * budget


@pytest.mark.parametrize("window", ["before-parent-run", "parent-run-without-spec", "before-first-checkpoint"])
def test_every_kill_window_ends_with_one_parent_run_and_a_working_run(
    window: str, workspace: Path, prefect_api: str
) -> None:
    name, budget = f"killed-{window}", 2
    spec = make_spec(name, budget={"trials": budget, "max_parallel": 1})
    (workspace / "spec.json").write_text(json.dumps(spec))
    _run_killed(workspace, prefect_api, window, "run", "spec.json", "--quiet")
    assert open_store("file://ckpt").read(name) is None  # killed before any checkpoint
    assert len(_parent_runs(workspace, name)) == (0 if window == "before-parent-run" else 1)

    if window != "before-first-checkpoint":  # nothing to resume from: it says to run the spec, in one line
        with pytest.raises(ExperimentNotFoundError, match=r"start it with `prefect-hpo run SPEC`") as info:
            hpo_flow(name=name, storage="file://ckpt", resume=True)
        assert "\n" not in str(info.value)
    else:  # the parent run holds the spec: `resume NAME` rebuilds the experiment from MLflow and runs it
        hpo_flow(name=name, storage="file://ckpt", resume=True)
        _assert_one_finished_parent(workspace, name, budget)
    # `run SPEC` continues the parent run that was started, if any (it used to finish beside a
    # second parent run left RUNNING with no children)
    hpo_flow(spec=spec)
    _assert_one_finished_parent(workspace, name, budget)

    hpo_flow(name=name, storage="file://ckpt", resume=True)  # and a later resume works on it
    _assert_one_finished_parent(workspace, name, budget)


def test_resume_of_a_parent_run_without_spec_says_run_spec_in_one_line(workspace: Path, prefect_api: str) -> None:
    """Through the real CLI: one error line that says what to do, no traceback."""
    name = "killed-cli"
    (workspace / "spec.json").write_text(json.dumps(make_spec(name, budget={"trials": 1, "max_parallel": 1})))
    _run_killed(workspace, prefect_api, "parent-run-without-spec", "run", "spec.json", "--quiet")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.run([sys.executable, "-m", "prefect_hpo.cli", "resume", name, "--storage", "file://ckpt"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("prefect-hpo: error:")]
    assert len(errors) == 1 and "has no spec.json" in errors[0] and "`prefect-hpo run SPEC`" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
