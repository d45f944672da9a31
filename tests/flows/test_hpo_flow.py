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
from processes import gone


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
        assert "prefect_hpo.params" not in run.data.tags  # plain params round-trip through MLflow's own
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert "prefect_hpo.values" not in run.data.tags and "prefect_hpo.failure_reason" not in run.data.tags
        assert run.data.tags["prefect_hpo.flow_run_id"] == state.flow_run_id
        assert any(a.path.startswith("logs") for a in client.list_artifacts(run.info.run_id))
    # the parent is the dashboard: one best_so_far point per completed trial, the best child tagged
    parent = parents[0]
    curve = client.get_metric_history(parent.info.run_id, "hpo/best_so_far/loss")
    assert sorted(m.step for m in curve) == list(range(1, 7))
    assert parent.data.params == {}
    top = exp.best_trial
    assert parent.data.tags["prefect_hpo.best_trial"] == str(top.index)
    assert parent.data.tags["prefect_hpo.best_run_id"] == top.metadata["run_id"]
    assert [r.data.tags["prefect_hpo.trial_index"] for r in children if r.data.tags.get("prefect_hpo.best") == "true"] == [str(top.index)]

    # the checkpoint equals the experiment the flow ended with: the same document round-trips
    again = ExperimentState.from_json(state.to_json(), "copy")
    assert again.experiment.to_dict() == exp.to_dict()

    # the flow published its artifacts: the trial table (best first) and a summary,
    # published while it ran too (versions of the same key): the latest one is the final state
    table, summary = _artifacts("e2e-trials"), _artifacts("e2e-summary")
    assert table and summary
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert len(rows) == 6 and rows[0]["trial"] == best["index"]
    assert f"best: trial {best['index']}" in summary[0].data
    assert f"(what ran: {parent.data.tags['prefect_hpo.strategy']})" in summary[0].data  # not just `auto`

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
    run_state = hpo_flow(spec=spec, return_state=True)
    best = run_state.result()
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
    assert not [pid for pid in hang_pids if not gone(pid)]
    # in the Prefect UI each trial is one task run in the state it ended in, retries included
    spans = _trial_spans(run_state.state_details.flow_run_id, expected=5)
    assert {name: state for name, (state, _) in spans.items()} == {
        f"trial-{t.index:04d}": "FAILED" if t.status.value == "failed" else "COMPLETED" for t in exp.trials
    }
    assert "exit code 1" in spans[f"trial-{by_mode['crash'].index:04d}"][1]
    assert "timed out" in spans[f"trial-{by_mode['hang'].index:04d}"][1]
    assert spans[f"trial-{by_mode['ok'].index:04d}"][1].startswith("loss=")
    # each failure and its reason reached MLflow
    _, children = _mlflow_runs(workspace, "faults")
    reasons = {int(r.data.tags["prefect_hpo.trial_index"]): r.data.tags.get("prefect_hpo.failure_reason", "") for r in children}
    assert "timed out" in reasons[by_mode["hang"].index]
    assert len(children) == 5


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


@pytest.mark.parametrize("algorithm", ["grid", "gp"])
def test_a_budget_larger_than_a_finite_space_ends_with_the_best_found(workspace: Path, algorithm: str) -> None:
    spec = make_spec(
        "tiny-space", algorithm=algorithm, budget={"trials": 10, "max_parallel": 2},
        parameters=[{"name": "x", "type": "range", "bounds": [0, 1]}],  # an int range: two points
    )
    best = hpo_flow(spec=spec)
    exp = _state("file://ckpt", "tiny-space").experiment
    assert {t.params["x"] for t in exp.trials} == {0, 1} and len(exp.trials) < 10
    assert all(t.status.value == "completed" for t in exp.trials)
    assert best is not None and best["params"] == {"x": 0}


def test_the_wall_time_budget_counts_the_experiment_time_across_flow_runs(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["TRIAL_SLEEP"] = "0.5"
    try:
        spec = make_spec("clocked", budget={"trials": 50, "max_parallel": 1, "wall_time_s": 3})
        hpo_flow(spec=spec)
        first = _state("file://ckpt", "clocked")
        assert 0 < len(first.experiment.trials) < 50  # stopped by the clock, not the trial budget
        assert first.wall_time_s >= 3 and first.driver_runs == 1
        # a second run of the same spec finds the time already spent: it launches nothing
        hpo_flow(spec=spec)
        second = _state("file://ckpt", "clocked")
        assert len(second.experiment.trials) == len(first.experiment.trials)
        assert second.driver_runs == 2 and second.wall_time_s >= first.wall_time_s
        # raising the budget is how the experiment is given more time
        hpo_flow(spec={**spec, "budget": {**spec["budget"], "wall_time_s": second.wall_time_s + 2}})
        third = _state("file://ckpt", "clocked")
        assert len(third.experiment.trials) > len(second.experiment.trials)
        from prefect_hpo.cli import main

        capsys.readouterr()
        assert main(["status", "clocked", "--storage", "file://ckpt"]) == 0
        assert f"budget.wall_time_s, over 3 flow runs" in capsys.readouterr().out
    finally:
        del os.environ["TRIAL_SLEEP"]


def _trial_spans(flow_run_id: object, expected: int) -> dict[str, tuple[str, str]]:
    """``trial-NNNN`` task runs of a flow run: name -> (state type, state message), once all
    ``expected`` are final (the server records task runs from events, a moment after the flow)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            spans = {r.name: r for r in runs if r.name.startswith("trial-")}
            final = [r for r in spans.values() if r.state is not None and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                return {name: (r.state.type.value, r.state.message or "") for name, r in spans.items()}
            time.sleep(0.5)


def _artifacts(key: str) -> list:
    """The latest version of the artifact ``key`` (Prefect keeps every version of a key), in a list."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as client:
        return client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])))


def test_artifacts_show_the_experiment_while_it_runs(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running (or killed) experiment shows where it stands: the progress bar, the trial table
    (numbers as numbers) and the summary are there before the flow returns."""
    import threading

    monkeypatch.setenv("TRIAL_SLEEP", "0.4")
    monkeypatch.setenv("PREFECT_HPO_ARTIFACT_INTERVAL_S", "0")
    spec = make_spec("live", budget={"trials": 6, "max_parallel": 1})
    runner = threading.Thread(target=hpo_flow, kwargs={"spec": spec})
    runner.start()
    seen_mid_run = None
    try:
        while runner.is_alive():
            table = _artifacts("live-trials")
            if table:
                rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
                done = [r for r in rows if r["status"] == "completed"]
                if done and len(done) < 6 and runner.is_alive():
                    seen_mid_run, mid_run_owner = rows, table[0].flow_run_id
                    break
            runner.join(0.2)
    finally:
        runner.join(120)
    assert seen_mid_run is not None, "no trial table was published while the flow ran"
    assert mid_run_owner is not None, "the live table (sent from the artifacts' own thread) is not the flow run's"
    completed = [r for r in seen_mid_run if r["status"] == "completed"]
    assert all(isinstance(r["loss"], float) and isinstance(r["x"], float) for r in completed), completed
    progress = _artifacts("live-progress")
    assert progress and float(progress[0].data) == 100.0  # updated in place to the end
    summary = _artifacts("live-summary")
    assert summary and "mlflow ui --backend-store-uri sqlite:///" in summary[0].data


def test_each_trial_event_is_a_line_in_the_flow_runs_log(workspace: Path) -> None:
    """The Prefect UI's Logs tab tells the experiment's story: a line per launch and per end."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    import logging

    # the suite runs with PREFECT_LOGGING_LEVEL=WARNING; the CLI keeps Prefect's loggers at INFO
    # (only its console handler is quieted), which is what this test reproduces; trial events
    # are logged on each trial's own task run (its span), which the flow run's Logs tab shows
    run_loggers = [logging.getLogger("prefect.flow_runs"), logging.getLogger("prefect.task_runs")]
    levels = [log.level for log in run_loggers]
    for log in run_loggers:
        log.setLevel(logging.INFO)
    try:
        state = hpo_flow(spec=make_spec("logged", budget={"trials": 3, "max_parallel": 1}), return_state=True)
    finally:
        for log, level in zip(run_loggers, levels):
            log.setLevel(level)
    flow_run_id = state.state_details.flow_run_id
    messages: list[str] = []
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:  # logs reach the API in batches, after the flow's return too
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
            messages = [log.message for log in logs]
            if sum(" completed: loss=" in m for m in messages) == 3:
                break
            time.sleep(0.5)
    for index in range(3):
        assert sum(m.startswith(f"trial {index} launched (attempt 1, sobol): ") for m in messages) == 1, messages
        assert sum(m.startswith(f"trial {index} completed: loss=") for m in messages) == 1, messages
