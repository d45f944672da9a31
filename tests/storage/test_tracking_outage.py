"""MLflow outages at the tracker level: fail fast at start, queue and replay writes, repair runs.

Against MLflow's real tracking server on loopback (``mlflowkit``), killed and started again on
the same port and database, and against MLflow on a SQLite file for the reconciliation.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from mlflowkit import MlflowServer, mlflow_server, nothing_listening  # noqa: F401 - fixture

from prefect_hpo.errors import StorageError
from prefect_hpo.storage import tracking_http
from prefect_hpo.storage.tracking import MlflowTracker, is_pending_run, pending_run_id
from prefect_hpo.storage.tracking_sync import TrialView, reconcile
from prefect_hpo.trial import Report

SPEC = {"name": "outage", "algorithm": "sobol", "seed": 0, "objectives": {"loss": "minimize"}}
SPACE = [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}]
QUEUE_LOG = "prefect_hpo.storage.tracking_queue"


def _children(client: MlflowClient, experiment_id: str, parent: str) -> dict[int, list]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", run_view_type=ViewType.ACTIVE_ONLY
    )
    out: dict[int, list] = {}
    for run in runs:
        out.setdefault(int(run.data.tags["prefect_hpo.trial_index"]), []).append(run)
    return out


def test_an_unreachable_tracking_server_fails_at_start_naming_the_uri() -> None:
    uri = nothing_listening()
    with pytest.raises(StorageError, match=re.escape(uri) + ".*does not answer"):
        MlflowTracker(uri, "nobody-home", background=True)


def test_a_silent_tracking_server_fails_at_start_too() -> None:
    """A server that accepts connections and never answers (a hung host) fails the probe."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(StorageError, match=re.escape(uri) + ".*does not answer"):
            MlflowTracker(uri, "silent")


def test_a_trial_run_created_late_is_not_created_twice(mlflow_server: MlflowServer) -> None:
    """The create call outlives its bounded wait (the server hangs): the trial gets a pending id,
    and when the late answer comes the queue adopts that run instead of creating a second one."""
    tracker = MlflowTracker(mlflow_server.uri, "late-create", background=True, create_timeout_s=0.5, retry_delays_s=(0.2,))
    parent = tracker.start_experiment_run(SPEC, SPACE)
    assert tracker.drain(30)
    mlflow_server.pause()
    try:
        run = tracker.start_trial_run(parent, 0, {"x": 0.5}, "sobol")
        assert is_pending_run(run)
        tracker.log_reports(run, [Report(0, {"loss": 1.5})])
        tracker.finish_trial_run(run, status="completed", values={"loss": 1.5})
    finally:
        mlflow_server.resume()
    assert tracker.close(60)
    client = MlflowClient(mlflow_server.uri)
    children = _children(client, tracker.experiment_id, parent)
    assert list(children) == [0] and len(children[0]) == 1
    assert children[0][0].info.run_id == tracker.resolve(run)
    assert children[0][0].info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(tracker.resolve(run), "loss")] == [1.5]


def test_http_retries_are_bounded_for_us_and_left_alone_for_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    tracking_http.bound_http_retries()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == tracking_http.BOUNDED_HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    # trials get MLflow's own defaults back for what we bounded, and the user's value as it is
    assert tracking_http.trial_env() == {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


def test_writes_wait_out_an_outage_in_order_and_a_trial_run_comes_later(
    mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=QUEUE_LOG)
    tracker = MlflowTracker(mlflow_server.uri, "outage-queue", background=True, retry_delays_s=(0.2,))
    client = MlflowClient(mlflow_server.uri)
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run0 = tracker.start_trial_run(parent, 0, {"x": 0.1}, "sobol")
    assert not is_pending_run(run0)
    assert tracker.drain(30)

    mlflow_server.stop()
    tracker.log_reports(run0, [Report(0, {"loss": 3.0}), Report(1, {"loss": 2.0})])
    tracker.log_reports(run0, [Report(2, {"loss": 1.0})])
    tracker.finish_trial_run(run0, status="completed", values={"loss": 1.0})
    run1 = tracker.start_trial_run(parent, 1, {"x": 0.9}, "sobol")  # MLflow is down: no id to give
    assert run1 == pending_run_id(1)
    tracker.log_reports(run1, [Report(0, {"loss": 5.0})])
    tracker.finish_trial_run(run1, status="failed", failure_reason="diverged")
    assert tracker.backlogged and tracker.backlog >= 5
    assert not tracker.drain(0.5)  # still down: nothing is made, nothing is lost

    mlflow_server.start()
    assert tracker.drain(60)
    assert not tracker.backlogged
    real1 = tracker.resolve(run1)
    assert real1 is not None and not is_pending_run(real1)
    finished = client.get_run(run0)
    assert finished.info.status == "FINISHED"
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(run0, "loss"), key=lambda m: m.step)] == [
        (0, 3.0), (1, 2.0), (2, 1.0)
    ]
    failed = client.get_run(real1)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["prefect_hpo.failure_reason"] == "diverged"
    assert failed.data.tags["mlflow.parentRunId"] == parent
    assert [m.value for m in client.get_metric_history(real1, "loss")] == [5.0]
    assert {i: len(r) for i, r in _children(client, tracker.experiment_id, parent).items()} == {0: 1, 1: 1}
    messages = [r.getMessage() for r in caplog.records if r.name == QUEUE_LOG]
    assert sum("is unreachable" in m for m in messages) == 1, messages
    assert sum("is back" in m for m in messages) == 1, messages
    assert not [r for r in caplog.records if r.name.startswith("urllib3") and r.threadName.startswith("prefect-hpo-mlflow")]
    assert tracker.close(10)


def test_a_write_mlflow_refuses_is_dropped_and_the_rest_go_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=QUEUE_LOG)
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "refused", background=True)
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run = tracker.start_trial_run(parent, 0, {"x": 0.5}, "sobol")
    tracker.log_reports("0" * 32, [Report(0, {"loss": 1.0})])  # no such run: refused for good
    tracker.log_reports(run, [Report(0, {"loss": 2.0})])
    assert tracker.close(30)
    assert MlflowClient(tracker.tracking_uri).get_run(run).data.metrics == {"loss": 2.0}
    assert any("dropped" in r.getMessage() for r in caplog.records if r.name == QUEUE_LOG)


def _view(index: int, status: str, *, run_id: str | None, values: dict | None = None, reason: str | None = None,
          history: tuple = ((0, {"loss": 2.0}), (1, {"loss": 1.0}))) -> TrialView:
    return TrialView(index=index, run_id=run_id, params={"x": index / 10}, suggester="sobol", status=status,
                     values=values, failure_reason=reason, attempt=1, stopped_by="median" if status == "early_stopped" else None,
                     feasible=None, history=history)


def test_reconcile_makes_mlflow_match_the_checkpoint(tmp_path: Path) -> None:
    """What an outage leaves: a run RUNNING forever with no metrics, a trial with no run, a
    duplicate run, a pending id, the parent left open; one reconciliation repairs them all and
    a second one finds nothing to do."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "repair")
    client = MlflowClient(tracker.tracking_uri)
    parent = tracker.start_experiment_run(SPEC, SPACE)
    stale = tracker.start_trial_run(parent, 0, {"x": 0.0}, "sobol")  # left RUNNING, no metrics
    dup_a = tracker.start_trial_run(parent, 2, {"x": 0.2}, "sobol")
    tracker.start_trial_run(parent, 2, {"x": 0.2}, "sobol")  # a create retried after a lost answer
    views = [
        _view(0, "completed", run_id=stale, values={"loss": 1.0}),
        _view(1, "failed", run_id=pending_run_id(1), reason="exit 3"),
        _view(2, "early_stopped", run_id=dup_a, values={"loss": 1.0}, reason="worse than the median"),
        _view(3, "running", run_id=None, history=((0, {"loss": 4.0}),)),
        _view(4, "pending", run_id=None, history=()),
        _view(5, "completed", run_id=None, values={"loss": 1.0}),  # an older flow's failed create
    ]
    views[4] = TrialView(**{**views[4].__dict__, "attempt": 0})  # never launched: no run wanted
    run_ids = reconcile(tracker, parent, views, "FINISHED", final=True)

    children = _children(client, tracker.experiment_id, parent)
    assert sorted(children) == [0, 1, 2, 3, 5]
    assert all(len(runs) == 1 for runs in children.values())
    assert run_ids[0] == stale and run_ids[2] == dup_a
    assert tracker.resolve(pending_run_id(1)) == run_ids[1]
    expected = {0: ("FINISHED", "completed"), 1: ("FAILED", "failed"), 2: ("KILLED", "early_stopped"), 3: ("RUNNING", "running"),
                5: ("FINISHED", "completed")}
    for index, (mlflow_status, status) in expected.items():
        run = client.get_run(run_ids[index])
        assert (run.info.status, run.data.tags["prefect_hpo.status"]) == (mlflow_status, status), index
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(stale, "loss"), key=lambda m: m.step)] == [(0, 2.0), (1, 1.0)]
    assert client.get_run(run_ids[1]).data.tags["prefect_hpo.failure_reason"] == "exit 3"
    assert client.get_run(run_ids[2]).data.tags["prefect_hpo.stopped_by"] == "median"
    assert client.get_run(parent).info.status == "FINISHED"

    again = reconcile(tracker, parent, [TrialView(**{**v.__dict__, "run_id": run_ids.get(v.index)}) for v in views], "FINISHED", final=True)
    assert again == run_ids
    assert {i: len(r) for i, r in _children(client, tracker.experiment_id, parent).items()} == {0: 1, 1: 1, 2: 1, 3: 1, 5: 1}
    assert len(client.get_metric_history(stale, "loss")) == 2  # nothing logged twice


def test_resume_mode_leaves_an_unlaunched_in_flight_trial_to_its_launch(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "repair-resume")
    parent = tracker.start_experiment_run(SPEC, SPACE)
    reconcile(tracker, parent, [_view(0, "running", run_id=None)], "RUNNING", final=False)
    assert _children(MlflowClient(tracker.tracking_uri), tracker.experiment_id, parent) == {}
