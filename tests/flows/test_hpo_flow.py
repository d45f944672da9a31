"""The HPO flow end to end: a real Prefect server, MLflow on SQLite, trials as real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import CorruptCheckpointError, LeaseHeldError, SpecError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState
from flowkit import events, make_spec


def _state(storage: str, name: str) -> ExperimentState:
    store = open_store(storage)
    text = store.read(name)
    assert text is not None, f"no checkpoint for {name}"
    return ExperimentState.from_json(text, store.location(name))


def _mlflow_runs(workspace: Path, name: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("prefect_hpo.role") == "experiment"]
    children = [r for r in runs if r.data.tags.get("prefect_hpo.role") == "trial"]
    return parents, children


def test_flow_runs_the_budget_in_parallel_and_records_everything(workspace: Path) -> None:
    os.environ["TRIAL_SLEEP"] = "0.3"
    try:
        spec = make_spec("e2e", budget={"trials": 6, "max_parallel": 2}, algorithm="auto")
        best = hpo_flow(spec=spec)
    finally:
        del os.environ["TRIAL_SLEEP"]
    state = _state("file://ckpt", "e2e")
    exp = state.experiment
    assert len(exp.trials) == 6
    assert all(t.status.value == "completed" for t in exp.trials)
    assert {t.suggester for t in exp.trials} == {"sobol", "gp"}  # auto: Sobol first, then the model
    assert best is not None and best["index"] == exp.best_trial.index
    assert best["values"] == exp.best_trial.values

    # parallelism: at most two trials ran at once, and two did at some point
    intervals = [(t.started_at, t.finished_at) for t in exp.trials]
    overlap = max(sum(1 for s, f in intervals if s <= point < f) for point, _ in intervals)
    assert overlap == 2

    # MLflow: one parent, one child per trial, nested, with the metric history of every report
    parents, children = _mlflow_runs(workspace, "e2e")
    assert len(parents) == 1 and parents[0].info.run_id == state.parent_run_id
    assert sorted(int(r.data.tags["prefect_hpo.trial_index"]) for r in children) == list(range(6))
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == state.parent_run_id
        trial = exp.trial(int(run.data.tags["prefect_hpo.trial_index"]))
        assert trial.metadata["run_id"] == run.info.run_id
        assert run.data.tags["prefect_hpo.status"] == "completed"
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == [0, 1, 2]
        assert run.data.metrics["loss"] == pytest.approx(trial.values["loss"])
        assert json.loads(run.data.tags["prefect_hpo.params"]) == trial.params
        assert any(a.path.startswith("logs") for a in client.list_artifacts(run.info.run_id))

    # the checkpoint equals the experiment the flow ended with: the same document round-trips
    again = ExperimentState.from_json(state.to_json(), "copy")
    assert again.experiment.to_dict() == exp.to_dict()

    # the flow published its artifacts: the trial table (best first) and a summary
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["e2e-trials"])))
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["e2e-summary"])))
    assert table and summary
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert len(rows) == 6 and rows[0]["trial"] == best["index"]
    assert f"best: trial {best['index']}" in summary[0].data

    # running the same spec again continues the finished experiment: nothing runs twice
    before = len(events(workspace))
    assert hpo_flow(spec=spec) == best
    assert len(events(workspace)) == before


def test_faulty_trials_are_recorded_failed_and_the_experiment_goes_on(workspace: Path) -> None:
    spec = make_spec(
        "faults",
        parameters=[{"name": "mode", "type": "choice", "values": ["ok", "crash", "hang", "nan", "flaky"]}],
        algorithm="grid",
        budget={"trials": 5, "max_parallel": 3},
        trial={"timeout_s": 3, "retries": 1},
    )
    best = hpo_flow(spec=spec)
    exp = _state("file://ckpt", "faults").experiment
    by_mode = {t.params["mode"]: t for t in exp.trials}
    assert set(by_mode) == {"ok", "crash", "hang", "nan", "flaky"}
    assert by_mode["ok"].status.value == "completed"
    assert by_mode["flaky"].status.value == "completed"  # exit 3 on attempt 1, fine on the retry
    assert by_mode["flaky"].metadata["attempt"] == 2
    assert by_mode["crash"].status.value == "failed" and "exit code 1" in by_mode["crash"].failure_reason
    assert by_mode["crash"].metadata["attempt"] == 2  # retried once, then given up
    assert by_mode["hang"].status.value == "failed" and "timed out" in by_mode["hang"].failure_reason
    assert by_mode["nan"].status.value == "failed" and "nan" in by_mode["nan"].failure_reason.lower()
    assert by_mode["nan"].metadata["attempt"] == 1  # a NaN is a result: no retry
    assert best is not None and best["params"]["mode"] in {"ok", "flaky"}
    # the hung trial's processes are gone (its process group was killed)
    hang_pids = [pid for kind, index, _, pid in events(workspace) if kind == "start" and index == by_mode["hang"].index]
    assert hang_pids
    assert not [pid for pid in hang_pids if _alive(pid)]
    # each failure and its reason reached MLflow
    _, children = _mlflow_runs(workspace, "faults")
    reasons = {int(r.data.tags["prefect_hpo.trial_index"]): r.data.tags.get("prefect_hpo.failure_reason", "") for r in children}
    assert "timed out" in reasons[by_mode["hang"].index]
    assert len(children) == 5


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent (or init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_corrupted_checkpoint_is_refused_and_left_untouched(workspace: Path) -> None:
    spec = make_spec("corrupt")
    path = workspace / "ckpt" / "corrupt" / "experiment.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "prefect-hpo/checkpoint", "version": 1, "spec": {tru')
    before = path.read_bytes()
    with pytest.raises(CorruptCheckpointError, match="left untouched"):
        hpo_flow(spec=spec)
    assert path.read_bytes() == before


def test_a_second_driver_is_refused_while_the_lease_is_held(workspace: Path) -> None:
    store = open_store("file://ckpt")
    with store.acquire_lease("leased"):  # a live driver: this very process
        with pytest.raises(LeaseHeldError, match=str(os.getpid())):
            hpo_flow(spec=make_spec("leased"))
    assert store.read("leased") is None  # the refused flow wrote nothing


def test_a_changed_search_under_the_same_name_is_refused(workspace: Path) -> None:
    hpo_flow(spec=make_spec("changed", budget={"trials": 1, "max_parallel": 1}))
    with pytest.raises(SpecError, match="different search"):
        hpo_flow(spec=make_spec("changed", seed=1))


def test_extending_the_budget_continues_the_experiment(workspace: Path) -> None:
    hpo_flow(spec=make_spec("extend", budget={"trials": 2, "max_parallel": 2}))
    hpo_flow(spec=make_spec("extend", budget={"trials": 4, "max_parallel": 2}))
    exp = _state("file://ckpt", "extend").experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * 4
    starts = [(i, a) for kind, i, a, _ in events(workspace) if kind == "start"]
    assert sorted(starts) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert len({tuple(sorted(t.params.items())) for t in exp.trials}) == 4


def test_a_lost_checkpoint_is_rebuilt_from_mlflow(workspace: Path) -> None:
    hpo_flow(spec=make_spec("rebuild", budget={"trials": 3, "max_parallel": 1}))
    first = _state("file://ckpt", "rebuild").experiment
    (workspace / "ckpt" / "rebuild" / "experiment.json").unlink()
    hpo_flow(spec=make_spec("rebuild", budget={"trials": 5, "max_parallel": 1}), resume=True)
    exp = _state("file://ckpt", "rebuild").experiment
    assert len(exp.trials) == 5 and all(t.status.value == "completed" for t in exp.trials)
    for old in first.trials:  # restored, not re-run
        assert exp.trial(old.index).params == old.params and exp.trial(old.index).values == old.values
    starts = sorted((i, a) for kind, i, a, _ in events(workspace) if kind == "start")
    assert starts == [(i, 1) for i in range(5)]
    # the Sobol sequence continued instead of restarting: no point was proposed twice
    assert len({tuple(sorted(t.params.items())) for t in exp.trials}) == 5
    _, children = _mlflow_runs(workspace, "rebuild")
    assert sorted(int(r.data.tags["prefect_hpo.trial_index"]) for r in children) == list(range(5))


def test_resume_needs_something_to_resume(workspace: Path) -> None:
    from prefect_hpo.errors import ExperimentNotFoundError

    with pytest.raises(ExperimentNotFoundError, match="nothing-here"):
        hpo_flow(name="nothing-here", storage="file://ckpt", resume=True)




def test_the_wall_clock_budget_stops_launching(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAL_SLEEP", "0.5")
    hpo_flow(spec=make_spec("wall", budget={"trials": 50, "max_parallel": 2, "wall_time_s": 2.0}))
    exp = _state("file://ckpt", "wall").experiment
    assert 2 <= len(exp.trials) < 50
    assert all(t.status.is_terminal for t in exp.trials)  # running trials were waited for
    assert all(t.status.value == "completed" for t in exp.trials)
    last_start = max(t.started_at for t in exp.trials)
    first_start = min(t.started_at for t in exp.trials)
    assert (last_start - first_start).total_seconds() < 2.0 + 1.5  # nothing launched long after the budget


def test_intermediate_reports_are_seen_while_the_trial_runs(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The learning curve reaches the stopping policy during the run (early stopping needs it)."""
    from prefect_hpo.flows import driver
    from prefect_hpo.optim.stopping import NoStopping

    monkeypatch.setenv("TRIAL_SLEEP", "0.6")
    monkeypatch.setenv("TRIAL_STEPS", "4")
    seen: list[int] = []

    class RecordingPolicy(NoStopping):
        def decide(self, histories, minimize):  # noqa: ANN001, ANN201
            seen.extend(len(h.values) for h in histories if h.running and h.values)
            return []

    monkeypatch.setattr(driver, "_stopping_policy", lambda state: RecordingPolicy())
    hpo_flow(spec=make_spec("curves", budget={"trials": 1, "max_parallel": 1}))
    assert seen and min(seen) < 4, f"the policy never saw a partial curve: {seen}"


def test_a_launch_the_checkpoint_missed_is_adopted_not_repeated(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow died after starting a trial's process but before checkpointing its handle."""
    from prefect_hpo.flows.driver import trials_dir_for
    from prefect_hpo.launchers.base import LaunchRequest
    from prefect_hpo.launchers.local import LocalProcessLauncher
    from prefect_hpo.spec import load_spec
    from prefect_hpo.tasks.launch import HANDLE_FILE, build_command

    monkeypatch.setenv("TRIAL_SLEEP", "0.5")
    spec = load_spec(make_spec("adopt", budget={"trials": 1, "max_parallel": 1}))
    state = ExperimentState(spec, spec.build_experiment())
    trial = state.experiment.ask()
    trial.metadata.update({"attempt": 0, "handle": None, "history": [], "attempts": []})
    store = open_store(spec.storage)
    store.write("adopt", state.to_json())  # the checkpoint knows the suggestion, not the launch
    workdir = trials_dir_for(spec.storage, "adopt") / "trial-0000" / "attempt-1"
    handle = LocalProcessLauncher().launch(
        LaunchRequest(
            experiment="adopt", index=0, attempt=1, command=build_command(spec.trial, trial.params),
            params=trial.params, env={"PREFECT_HPO_OBJECTIVES": '["loss"]'}, workdir=workdir,
        )
    )
    (workdir / HANDLE_FILE).write_text(json.dumps(handle))

    best = hpo_flow(spec=spec.to_dict(), resume=True)
    assert best is not None and best["index"] == 0
    exp = _state("file://ckpt", "adopt").experiment
    assert exp.trial(0).status.value == "completed" and exp.trial(0).metadata["attempt"] == 1
    assert [(kind, i, a) for kind, i, a, _ in events(workspace)] == [("start", 0, 1), ("end", 0, 1)]
