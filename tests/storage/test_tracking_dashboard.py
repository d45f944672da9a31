"""The MLflow parent run as the experiment's live dashboard, against a real MLflow on a SQLite file.

The pure parts (best-so-far curve, strategy, note) are checked on experiments built with the
optimizer's own ask/tell; the writer on a real tracker (synchronous writes, so each update is in
MLflow when ``update`` returns).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from mlflow.tracking import MlflowClient

from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.trials import Trial, TrialStatus
from prefect_hpo.storage.dashboard_view import best_so_far, dashboard_view, describe_strategy, note_markdown
from prefect_hpo.storage.tracking import MlflowTracker, pending_run_id
from prefect_hpo.storage.tracking_dashboard import DashboardWriter

PARAMS = [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}]


@pytest.fixture
def tracker(db_uri: str, request: pytest.FixtureRequest) -> MlflowTracker:
    tracker = MlflowTracker(db_uri, re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name))
    tracker.set_flow_run("flow-run-1", "http://prefect.example/runs/flow-run/flow-run-1")
    return tracker


@pytest.fixture
def client(db_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=db_uri)


def _experiment(objectives: dict[str, str] | None = None) -> Experiment:
    return Experiment(name="dash", parameters=PARAMS, objectives=objectives or {"loss": "minimize"}, algorithm="random", seed=0)


def _run(exp: Experiment, values: dict[str, float] | None, *, fail: str | None = None) -> Trial:
    trial = exp.ask()
    exp.mark_running(trial.index)
    return exp.tell(trial.index, failed=fail) if fail else exp.tell(trial.index, values)


def _start_runs(tracker: MlflowTracker, parent: str, exp: Experiment, have: dict[int, str] | None = None) -> dict[int, str]:
    """A child run for each trial without one in ``have``."""
    have = dict(have or {})
    for t in exp.trials:
        if t.index not in have:
            have[t.index] = tracker.start_trial_run(parent, t.index, dict(t.params), t.suggester)
    return have


# ---- pure ------------------------------------------------------------------------------------


def test_best_so_far_has_one_point_per_completed_trial_and_never_gets_worse() -> None:
    exp = _experiment()
    for loss in (3.0, 5.0):
        _run(exp, {"loss": loss})
    _run(exp, None, fail="boom")  # not completed: no point
    for loss in (1.0, 2.0):
        _run(exp, {"loss": loss})
    assert best_so_far(exp) == [(1, 3.0), (2, 3.0), (3, 1.0), (4, 1.0)]

    maximize = _experiment({"acc": "maximize"})
    for acc in (0.2, 0.1, 0.9):
        _run(maximize, {"acc": acc})
    assert best_so_far(maximize) == [(1, 0.2), (2, 0.2), (3, 0.9)]
    assert best_so_far(_experiment({"a": "minimize", "b": "minimize"})) == []


def test_best_so_far_follows_the_order_trials_completed_in() -> None:
    exp = _experiment()
    a, b = exp.ask(2)
    for t in (a, b):
        exp.mark_running(t.index)
    exp.tell(b.index, {"loss": 1.0})  # the later trial finished first
    exp.tell(a.index, {"loss": 2.0})
    a.finished_at = b.finished_at + timedelta(seconds=1)
    assert best_so_far(exp) == [(1, 1.0), (2, 1.0)]


def test_strategy_describes_consecutive_runs_of_one_suggester() -> None:
    def trials(*names: str) -> list[Trial]:
        return [Trial(index=i, params={}, suggester=n) for i, n in enumerate(names)]

    assert describe_strategy(trials(*["sobol"] * 8, "gp", "gp")) == "sobol (trials 0-7), then gp"
    assert describe_strategy(trials("random", "random")) == "random (trials 0-1)"
    assert describe_strategy(trials("sobol", "gp", "sobol", "")) == "sobol (trial 0), then gp (trial 1), then sobol (trial 2), then manual"
    assert describe_strategy([]) == ""


def test_note_summarizes_objectives_budget_trials_best_and_links_the_flow_run() -> None:
    exp = _experiment()
    _run(exp, {"loss": 0.5})
    _run(exp, None, fail="boom")
    exp.ask()
    note = note_markdown(dashboard_view(exp, budget=10), "http://prefect.example/runs/flow-run/abc")
    assert "minimize `loss`" in note
    assert "2 ended of a budget of 10: 1 completed, 1 failed, 0 stopped early; 1 running" in note
    assert "**Best trial:** 0: `loss` = 0.5" in note and "`x` = " in note
    assert "**Strategy:** random" in note
    assert "[http://prefect.example/runs/flow-run/abc](http://prefect.example/runs/flow-run/abc)" in note
    assert "Prefect flow run" not in note_markdown(dashboard_view(exp))


# ---- written to MLflow -------------------------------------------------------------------------


def test_the_parent_run_shows_the_curve_counts_best_and_description(tracker: MlflowTracker, client: MlflowClient) -> None:
    exp = _experiment()
    parent = tracker.start_experiment_run({"name": "dash"}, PARAMS)
    writer = DashboardWriter(tracker, parent, interval_s=0)
    for loss in (3.0, 2.0):  # a batch of two
        _run(exp, {"loss": loss})
    run_ids = _start_runs(tracker, parent, exp)
    writer.update(dashboard_view(exp, 6), run_ids)

    _run(exp, None, fail="diverged")
    _run(exp, {"loss": 1.0})
    run_ids = _start_runs(tracker, parent, exp, run_ids)
    writer.update(dashboard_view(exp, 6), run_ids)
    writer.update(dashboard_view(exp, 6), run_ids)  # a repeated final update adds no points

    curve = sorted(client.get_metric_history(parent, "hpo/best_so_far/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in curve] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    run = client.get_run(parent)
    assert {k: v for k, v in run.data.metrics.items()} == {
        "hpo/best_so_far/loss": 1.0, "hpo/trials/completed": 3.0, "hpo/trials/failed": 1.0,
        "hpo/trials/early_stopped": 0.0, "hpo/trials/running": 0.0,
    }
    assert [m.step for m in client.get_metric_history(parent, "hpo/trials/completed")] == [2, 4]
    tags = run.data.tags
    assert tags["prefect_hpo.best_trial"] == "3" and tags["prefect_hpo.best_run_id"] == run_ids[3]
    assert tags["prefect_hpo.strategy"] == "random (trials 0-3)"
    assert tags["prefect_hpo.flow_run_id"] == "flow-run-1"
    assert tags["prefect_hpo.flow_run_url"] == "http://prefect.example/runs/flow-run/flow-run-1"
    assert "**Best trial:** 3" in tags["mlflow.note.content"]
    assert "http://prefect.example/runs/flow-run/flow-run-1" in tags["mlflow.note.content"]
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.note.content"] == tags["mlflow.note.content"]

    children = {i: client.get_run(r) for i, r in run_ids.items()}
    assert [i for i, r in children.items() if r.data.tags.get("prefect_hpo.best") == "true"] == [3]
    for r in [run, *children.values()]:
        assert not [k for k, v in r.data.tags.items() if v == ""], r.info.run_name
        assert r.data.tags["prefect_hpo.flow_run_id"] == "flow-run-1"


def test_the_best_tag_moves_and_a_resumed_flow_continues_the_curve(tracker: MlflowTracker, client: MlflowClient) -> None:
    exp = _experiment()
    parent = tracker.start_experiment_run({"name": "dash"}, PARAMS)
    _run(exp, {"loss": 2.0})
    run_ids = _start_runs(tracker, parent, exp)
    DashboardWriter(tracker, parent, interval_s=0).update(dashboard_view(exp), run_ids)
    assert client.get_run(run_ids[0]).data.tags.get("prefect_hpo.best") == "true"

    resumed = DashboardWriter(tracker, parent, interval_s=0)  # a new flow run: it learns what is in MLflow
    _run(exp, {"loss": 1.0})
    run_ids = _start_runs(tracker, parent, exp, run_ids)
    resumed.update(dashboard_view(exp), run_ids)

    assert "prefect_hpo.best" not in client.get_run(run_ids[0]).data.tags
    assert client.get_run(run_ids[1]).data.tags["prefect_hpo.best"] == "true"
    curve = client.get_metric_history(parent, "hpo/best_so_far/loss")
    assert sorted((m.step, m.value) for m in curve) == [(1, 2.0), (2, 1.0)]


def test_a_run_created_late_gets_the_best_tag_from_the_late_ids(tracker: MlflowTracker, client: MlflowClient) -> None:
    exp = _experiment()
    parent = tracker.start_experiment_run({"name": "dash"}, PARAMS)
    _run(exp, {"loss": 2.0})
    writer = DashboardWriter(tracker, parent, interval_s=0)
    writer.update(dashboard_view(exp), {0: pending_run_id(0)})  # MLflow was down: no run yet
    assert "prefect_hpo.best_run_id" not in client.get_run(parent).data.tags

    late = {0: tracker.start_trial_run(parent, 0, dict(exp.trial(0).params), "random")}  # the reconciliation
    writer.update(dashboard_view(exp), {0: pending_run_id(0)}, late_ids=late)
    assert client.get_run(late[0]).data.tags["prefect_hpo.best"] == "true"
    assert client.get_run(parent).data.tags["prefect_hpo.best_run_id"] == late[0]


def test_pareto_members_are_tagged_and_lose_the_tag_when_dominated(tracker: MlflowTracker, client: MlflowClient) -> None:
    exp = _experiment({"a": "minimize", "b": "minimize"})
    parent = tracker.start_experiment_run({"name": "dash"}, PARAMS)
    writer = DashboardWriter(tracker, parent, interval_s=0)
    _run(exp, {"a": 1.0, "b": 3.0})
    _run(exp, {"a": 3.0, "b": 1.0})
    run_ids = _start_runs(tracker, parent, exp)
    writer.update(dashboard_view(exp), run_ids)

    def tagged() -> list[int]:
        return [i for i, r in run_ids.items() if client.get_run(r).data.tags.get("prefect_hpo.pareto") == "true"]

    assert tagged() == [0, 1]
    _run(exp, {"a": 0.5, "b": 2.0})  # dominates trial 0 only
    run_ids = _start_runs(tracker, parent, exp, run_ids)
    writer.update(dashboard_view(exp), run_ids)
    assert tagged() == [1, 2]
    run = client.get_run(parent)
    assert run.data.metrics["hpo/pareto_size"] == 2.0 and run.data.metrics["hpo/hypervolume"] > 0
    assert [m.step for m in client.get_metric_history(parent, "hpo/pareto_size")] == [2, 3]
    assert not [k for k in run.data.metrics if k.startswith("hpo/best_so_far")]
    assert "prefect_hpo.best_trial" not in run.data.tags
    assert not [r for r in run_ids.values() if "prefect_hpo.best" in client.get_run(r).data.tags]
    assert TrialStatus.COMPLETED is exp.trial(2).status


def test_updates_between_two_writes_are_coalesced_and_no_point_of_the_curve_is_lost(
    tracker: MlflowTracker, client: MlflowClient,
) -> None:
    """With an interval no test outlives, only the first update is written at once; the ones
    after it wait for a single later write that takes the newest view, and the final update is
    written at once with every best-so-far point (each view holds the whole curve)."""
    exp = _experiment()
    parent = tracker.start_experiment_run({"name": "dash"}, PARAMS)
    writer = DashboardWriter(tracker, parent, interval_s=3600)
    run_ids: dict[int, str] = {}
    for loss in (5.0, 4.0, 6.0, 3.0):
        _run(exp, {"loss": loss})
        run_ids = _start_runs(tracker, parent, exp, run_ids)
        writer.update(dashboard_view(exp, 6), run_ids)
    assert [m.step for m in client.get_metric_history(parent, "hpo/best_so_far/loss")] == [1], "spaced, not written yet"
    assert client.get_run(run_ids[0]).data.tags.get("prefect_hpo.best") == "true"

    writer.update(dashboard_view(exp, 6), run_ids, final=True)
    curve = sorted(client.get_metric_history(parent, "hpo/best_so_far/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in curve] == [(1, 5.0), (2, 4.0), (3, 4.0), (4, 3.0)]
    assert [m.step for m in client.get_metric_history(parent, "hpo/trials/completed")] == [1, 4]
    marked = [i for i, r in run_ids.items() if client.get_run(r).data.tags.get("prefect_hpo.best") == "true"]
    assert marked == [3]
