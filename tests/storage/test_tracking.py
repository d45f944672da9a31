"""MlflowTracker against a real MLflow on a SQLite file (no mocks).

One database serves the module (creating one runs MLflow's migrations, ~1.5 s); every test gets an
experiment of its own, named after the test.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import StorageError
from prefect_hpo.optim.space import SearchSpace
from prefect_hpo.storage.tracking import MlflowTracker, TrialRecord
from prefect_hpo.storage.tracking_uri import resolve_tracking_uri
from prefect_hpo.trial import Report

SPEC = {
    "name": "demo",
    "parameters": [{"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True}],
    "objectives": {"val_loss": "minimize", "accuracy": "maximize"},
    "algorithm": "gp",
    "seed": 7,
    "budget": {"trials": 20, "max_parallel": 2},
    "trial": {"command": "python train.py --lr {lr}"},
}
SPACE = [{"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True}]
_SPACE2 = SearchSpace.parse([
    {"name": "lr", "type": "range", "bounds": [1e-4, 0.1]},
    {"name": "units", "type": "range", "bounds": [1, 64], "value_type": "int"},
])


@pytest.fixture
def tracker(db_uri: str, request: pytest.FixtureRequest) -> MlflowTracker:
    return MlflowTracker(db_uri, re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name))


@pytest.fixture
def client(db_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=db_uri)


def test_parent_run_created_once_and_found_again(tracker: MlflowTracker, client: MlflowClient, db_uri: str) -> None:
    assert tracker.find_experiment_run() is None
    parent = tracker.start_experiment_run(SPEC, SPACE)

    again = MlflowTracker(db_uri, tracker.experiment_name)  # a second flow: same experiment, same run
    assert again.experiment_id == tracker.experiment_id
    assert again.find_experiment_run() == parent

    run = client.get_run(parent)
    assert run.info.run_name == tracker.experiment_name
    assert run.data.tags["prefect_hpo.role"] == "experiment"
    assert run.data.tags["prefect_hpo.algorithm"] == "gp"
    assert run.data.params == {}  # params of the parent would crowd the trials' column picker
    assert {k: v for k, v in run.data.tags.items() if k.startswith("prefect_hpo.")} == {
        "prefect_hpo.role": "experiment",
        "prefect_hpo.experiment": tracker.experiment_name,
        "prefect_hpo.algorithm": "gp",
        "prefect_hpo.seed": "7",
        "prefect_hpo.budget.trials": "20",
        "prefect_hpo.budget.max_parallel": "2",
        "prefect_hpo.objective.val_loss": "minimize",
        "prefect_hpo.objective.accuracy": "maximize",
    }
    assert {a.path for a in client.list_artifacts(parent)} == {"spec.json", "search_space.json"}
    assert tracker.load_spec(parent) == SPEC

    # Artifacts live beside the database, not under whichever cwd the flow had.
    location = client.get_experiment(tracker.experiment_id).artifact_location
    assert Path(location.removeprefix("file://")).parent == Path(db_uri.removeprefix("sqlite:///")).parent / "mlartifacts"


def test_trial_run_is_nested_with_typed_params(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    params = {"lr": 0.001, "hidden": 64, "optimizer": "adam", "dropout": True, "long": "x" * 7000}
    run_id = tracker.start_trial_run(parent, 3, params, "sobol", attempt=2)

    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.run_name == "trial-0003"
    assert run.info.status == "RUNNING"
    assert tags["mlflow.parentRunId"] == parent
    assert tags["prefect_hpo.role"] == "trial"
    assert tags["prefect_hpo.trial_index"] == "3"
    assert tags["prefect_hpo.suggester"] == "sobol"
    assert tags["prefect_hpo.status"] == "running"
    assert tags["prefect_hpo.attempt"] == "2"
    assert run.data.params["lr"] == "0.001"
    assert run.data.params["hidden"] == "64"
    assert len(run.data.params["long"]) <= 6000  # truncated to MLflow's limit, not rejected
    [record] = tracker.trial_records(parent)
    assert record.params == params  # typed and whole, from the tag (the long string would not round-trip)
    assert type(record.params["hidden"]) is int and record.params["dropout"] is True


def test_plain_params_have_no_json_tag_and_come_back_typed_by_the_space(tracker: MlflowTracker, client: MlflowClient) -> None:
    space = SearchSpace.parse([
        {"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True},
        {"name": "hidden", "type": "range", "bounds": [8, 128], "value_type": "int"},
        {"name": "optimizer", "type": "choice", "values": ["adam", "sgd"]},
        {"name": "dropout", "type": "choice", "values": [True, False]},
        {"name": "width", "type": "choice", "values": [1, 2.5, "wide"]},
        {"name": "epochs", "type": "fixed", "value": 10},
    ])
    parent = tracker.start_experiment_run(SPEC, SPACE)
    params = {"lr": 0.0012345678901234567, "hidden": 64, "optimizer": "sgd", "dropout": False, "width": 2.5, "epochs": 10}
    run_id = tracker.start_trial_run(parent, 0, params, "sobol")
    tracker.finish_trial_run(run_id, status="completed", values={"val_loss": 0.25})

    run = client.get_run(run_id)
    assert "prefect_hpo.params" not in run.data.tags and "prefect_hpo.values" not in run.data.tags
    assert "prefect_hpo.failure_reason" not in run.data.tags
    [record] = tracker.trial_records(parent, space=space, metric_names=["val_loss"])
    assert record.params == params and record.values == {"val_loss": 0.25}
    assert [type(record.params[k]) for k in ("lr", "hidden", "dropout", "width")] == [float, int, bool, float]
    assert tracker.trial_records(parent) == []  # without the space the params are unreadable: skipped


def test_values_tag_kept_when_the_metrics_would_not_give_them_back(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "gp")
    # the last report has an earlier step than another: MLflow's latest val_loss is 0.9, not 0.5
    tracker.log_reports(run_id, [Report(step=3, metrics={"val_loss": 0.9}), Report(step=1, metrics={"val_loss": 0.5})])
    tracker.finish_trial_run(run_id, status="completed", values={"val_loss": 0.5})
    assert client.get_run(run_id).data.tags["prefect_hpo.values"] == '{"val_loss":0.5}'
    [record] = tracker.trial_records(parent, space=SearchSpace.parse(SPACE))
    assert record.values == {"val_loss": 0.5}


def test_params_too_long_for_a_tag_round_trip_through_an_artifact(tracker: MlflowTracker) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    params = {f"layer_{i}": "conv3x3-" * 800 for i in range(2)}  # over the param limit, ~13 kB of JSON
    tracker.start_trial_run(parent, 0, params, "random")
    [record] = tracker.trial_records(parent)
    assert record.params == params


def test_log_reports_become_metric_history(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "random")

    tracker.log_reports(run_id, [Report(step=0, metrics={"val_loss": 1.0}), Report(step=1, metrics={"val_loss": 0.8})])
    tracker.log_reports(run_id, [Report(step=None, metrics={"val_loss": 0.7, "accuracy": 0.9})])
    tracker.log_reports(run_id, [Report(step=5, metrics={"val_loss": 0.6}), Report(step=None, metrics={"val_loss": 0.5})])
    tracker.log_reports(run_id, [])

    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(history) == [(0, 1.0), (1, 0.8), (2, 0.7), (5, 0.6), (6, 0.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "accuracy")] == [(2, 0.9)]

    other = tracker.start_trial_run(parent, 1, {"lr": 0.02}, "random")
    tracker.log_reports(other, [Report(step=None, metrics={"val_loss": 2.0})])  # no steps yet -> 0
    assert [m.step for m in client.get_metric_history(other, "val_loss")] == [0]


def test_non_finite_values_and_odd_names_do_not_crash(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "random")
    tracker.log_reports(run_id, [Report(step=0, metrics={"a": math.nan, "b": math.inf, "c": -math.inf, "val loss %": 1.0})])
    metrics = client.get_run(run_id).data.metrics
    assert math.isnan(metrics["a"])
    assert metrics["b"] == pytest.approx(1.7976931348623157e308)  # SQL has no inf: the largest double
    assert metrics["c"] == pytest.approx(-1.7976931348623157e308)
    assert metrics["val loss _"] == 1.0

    tracker.finish_trial_run(run_id, status="failed", values={"val_loss": math.nan}, failure_reason="objective is NaN")
    [record] = tracker.trial_records(parent, space=SearchSpace.parse(SPACE))
    assert record.status == "failed"
    assert record.values is not None and math.isnan(record.values["val_loss"])  # exact, from the JSON tag


def test_finish_trial_run_sets_status_reason_state_and_uploads_the_log(
    tracker: MlflowTracker, client: MlflowClient, tmp_path: Path
) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    ok = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "sobol")
    bad = tracker.start_trial_run(parent, 1, {"lr": 0.05}, "sobol")
    gone = tracker.start_trial_run(parent, 2, {"lr": 0.09}, "gp")
    log = tmp_path / "trial.out"
    log.write_text("epoch 1\nepoch 2\n")

    tracker.log_reports(ok, [Report(step=0, metrics={"val_loss": 0.5}), Report(step=1, metrics={"val_loss": 0.4})])
    tracker.finish_trial_run(ok, status="completed", values={"val_loss": 0.4, "accuracy": 0.93}, log_file=log, attempt=2)
    tracker.finish_trial_run(bad, status="failed", failure_reason="exit code 1: " + "boom " * 3000, log_file=log)
    tracker.finish_trial_run(gone, status="abandoned", failure_reason="flow cancelled", log_file=tmp_path / "missing.log")

    run = client.get_run(ok)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.data.tags["prefect_hpo.status"] == "completed"
    assert run.data.tags["prefect_hpo.attempt"] == "2"
    assert "prefect_hpo.failure_reason" not in run.data.tags  # no empty tags
    # val_loss was already the last report: not logged again; accuracy was never reported: logged once.
    assert [(m.step, m.value) for m in client.get_metric_history(ok, "val_loss")] == [(0, 0.5), (1, 0.4)]
    assert [(m.step, m.value) for m in client.get_metric_history(ok, "accuracy")] == [(2, 0.93)]
    assert [a.path for a in client.list_artifacts(ok, "logs")] == ["logs/attempt-2.log"]
    local = client.download_artifacts(ok, "logs/attempt-2.log", dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text() == "epoch 1\nepoch 2\n"

    run = client.get_run(bad)
    assert run.info.status == "FAILED"
    assert run.data.tags["prefect_hpo.failure_reason"].startswith("exit code 1: boom")
    assert len(run.data.tags["prefect_hpo.failure_reason"]) <= 8000
    assert [a.path for a in client.list_artifacts(bad, "logs")] == ["logs/attempt-1.log"]

    run = client.get_run(gone)
    assert run.info.status == "KILLED"
    assert client.list_artifacts(gone, "logs") == []  # a missing log is a warning, not an error

    with pytest.raises(ValueError, match="status must be one of"):
        tracker.finish_trial_run(ok, status="running")


def test_search_existing_reopens_instead_of_duplicating(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    first = tracker.start_trial_run(parent, 4, {"lr": 0.01}, "gp")
    tracker.finish_trial_run(first, status="failed", failure_reason="node lost")

    again = tracker.start_trial_run(parent, 4, {"lr": 0.01}, "gp", attempt=2, search_existing=True)
    assert again == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags["prefect_hpo.status"] == "running"
    assert run.data.tags["prefect_hpo.attempt"] == "2"
    assert tracker.trial_run_ids(parent) == {4: first}

    fresh = tracker.start_trial_run(parent, 5, {"lr": 0.02}, "gp", search_existing=True)  # nothing to reuse
    assert tracker.trial_run_ids(parent) == {4: first, 5: fresh}


def test_mark_trial_status_reopens_for_a_retry(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "gp")
    tracker.finish_trial_run(run_id, status="failed", failure_reason="OOM")
    tracker.mark_trial_status(run_id, "running", attempt=2, reason="retry after: OOM")
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["prefect_hpo.status"] == "running"
    assert run.data.tags["prefect_hpo.attempt"] == "2"
    assert run.data.tags["prefect_hpo.failure_reason"] == "retry after: OOM"
    with pytest.raises(ValueError, match="unknown status"):
        tracker.mark_trial_status(run_id, "weird")


def test_trial_records_rebuild_an_experiment(tracker: MlflowTracker, client: MlflowClient, caplog: pytest.LogCaptureFixture) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    other_parent = tracker.start_experiment_run(SPEC, SPACE)  # its trials must not leak in
    tracker.start_trial_run(other_parent, 0, {"lr": 0.5}, "random")

    r2 = tracker.start_trial_run(parent, 2, {"lr": 0.03, "units": 32}, "gp")
    r0 = tracker.start_trial_run(parent, 0, {"lr": 0.01, "units": 8}, "sobol")
    r1 = tracker.start_trial_run(parent, 1, {"lr": 0.02, "units": 16}, "sobol", attempt=2)
    tracker.finish_trial_run(r0, status="completed", values={"val_loss": 0.3, "accuracy": 0.9})
    tracker.finish_trial_run(r1, status="failed", failure_reason="Traceback: ValueError", attempt=2)

    records = tracker.trial_records(parent, space=_SPACE2)
    assert records == [
        TrialRecord(0, r0, {"lr": 0.01, "units": 8}, "sobol", "completed", {"val_loss": 0.3, "accuracy": 0.9}, None, 1),
        TrialRecord(1, r1, {"lr": 0.02, "units": 16}, "sobol", "failed", None, "Traceback: ValueError", 2),
        TrialRecord(2, r2, {"lr": 0.03, "units": 32}, "gp", "running", None, None, 1),
    ]
    assert tracker.trial_run_ids(parent) == {0: r0, 1: r1, 2: r2}

    time.sleep(0.01)  # a later start_time for the duplicate
    dup = tracker.start_trial_run(parent, 1, {"lr": 0.02, "units": 16}, "sobol", attempt=3)  # should not happen
    with caplog.at_level("WARNING", logger="prefect_hpo.storage.tracking"):
        assert tracker.trial_run_ids(parent)[1] == dup
    assert "trial 1 has two runs" in caplog.text

    tracker.finish_experiment_run(parent)
    assert client.get_run(parent).info.status == "FINISHED"


def test_trial_records_paginate(tracker: MlflowTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect_hpo.storage.tracking as tracking

    monkeypatch.setattr(tracking, "_SEARCH_PAGE", 2)
    parent = tracker.start_experiment_run(SPEC, SPACE)
    ids = {i: tracker.start_trial_run(parent, i, {"i": i}, "grid") for i in range(5)}
    assert tracker.trial_run_ids(parent) == ids


def test_trial_process_logs_to_its_own_run(tracker: MlflowTracker, client: MlflowClient, tmp_path: Path) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "random")
    env = {
        **os.environ,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_TRACKING_URI": tracker.tracking_uri,
        "MLFLOW_EXPERIMENT_ID": tracker.experiment_id,
    }
    code = "import mlflow; mlflow.start_run(); mlflow.log_metric('x', 1.0); mlflow.log_text('hi', 'note.txt')"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    run = client.get_run(run_id)
    assert run.data.metrics["x"] == 1.0
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert "note.txt" in {a.path for a in client.list_artifacts(run_id)}
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    # The trial's atexit hook ended the run as FINISHED; the flow's verdict still wins.
    tracker.finish_trial_run(run_id, status="failed", failure_reason="objective missing")
    assert client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.FAILED)


def test_concurrent_trials(tracker: MlflowTracker) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            run_id = tracker.start_trial_run(parent, i, {"i": i}, "random")
            for step in range(3):
                tracker.log_reports(run_id, [Report(step=step, metrics={"loss": 1.0 / (step + 1)})])
            tracker.finish_trial_run(run_id, status="completed", values={"loss": 1 / 3})
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.status for r in tracker.trial_records(parent, space=SearchSpace.parse([{"name": "i", "type": "range", "bounds": [0, 8], "value_type": "int"}]))] == ["completed"] * 8


def test_per_trial_cost(tracker: MlflowTracker, tmp_path: Path) -> None:
    """Prints one trial's MLflow lifecycle cost (run with -s); the flow's budget is 150 ms per trial."""
    parent = tracker.start_experiment_run(SPEC, SPACE)
    log = tmp_path / "trial.log"
    log.write_text("line\n" * 200)
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        run_id = tracker.start_trial_run(parent, i, {"lr": 0.01, "units": 32, "opt": "adam"}, "gp")
        for step in range(3):
            tracker.log_reports(run_id, [Report(step=step, metrics={"val_loss": 1.0 / (step + 1), "acc": 0.5})])
        tracker.finish_trial_run(run_id, status="completed", values={"val_loss": 1 / 3, "acc": 0.5}, log_file=log)
        times.append(time.perf_counter() - t0)
    print(f"\nMLflow per-trial lifecycle (SQLite): first {times[0] * 1000:.1f} ms, median {sorted(times)[2] * 1000:.1f} ms")


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path}/sub/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert resolve_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri("sqlite:////given.db") == "sqlite:////given.db"  # explicit beats env


def test_unusable_tracking_uri_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"  # a folder below a regular file cannot exist
    with pytest.raises(StorageError, match=re.escape(uri)):
        MlflowTracker(uri, "x")
    with pytest.raises(StorageError, match="foo://nowhere"):
        MlflowTracker("foo://nowhere", "x")


def test_deleted_experiment_is_refused(tracker: MlflowTracker, client: MlflowClient, db_uri: str) -> None:
    client.delete_experiment(tracker.experiment_id)
    with pytest.raises(StorageError, match="is deleted"):
        MlflowTracker(db_uri, tracker.experiment_name)


def test_sqlite_database_is_switched_to_wal(tmp_path: Path) -> None:
    import sqlite3

    def mode(path: Path) -> str:
        con = sqlite3.connect(path)
        try:
            return con.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            con.close()

    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).close()
    MlflowTracker(f"sqlite:///{plain}", "x", sqlite_wal=False)
    assert mode(plain) == "delete"
    MlflowTracker(f"sqlite:///{plain}", "x")
    assert mode(plain) == "wal"

    junk = tmp_path / "junk.db"
    junk.write_text("this is not a database, " * 100)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        MlflowTracker(f"sqlite:///{junk}", "x")


def test_a_retry_that_completes_loses_the_failure_reason(tracker: MlflowTracker, client: MlflowClient) -> None:
    parent = tracker.start_experiment_run(SPEC, SPACE)
    run_id = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "gp")
    tracker.finish_trial_run(run_id, status="failed", failure_reason="OOM")
    tracker.mark_trial_status(run_id, "running", attempt=2)
    tracker.mark_trial_status(run_id, "pending", reason="")  # an empty reason is no reason: no tag
    assert client.get_run(run_id).data.tags["prefect_hpo.failure_reason"] == "OOM"  # the retry keeps it meanwhile
    tracker.finish_trial_run(run_id, status="completed", values={"val_loss": 0.1}, attempt=2)
    tags = client.get_run(run_id).data.tags
    assert "prefect_hpo.failure_reason" not in tags
    assert tags["prefect_hpo.values"] == '{"val_loss":0.1}'  # a retry keeps the exact values

    tracker.set_flow_run("run-2", None)
    again = tracker.start_trial_run(parent, 0, {"lr": 0.01}, "gp", attempt=3, search_existing=True)
    assert again == run_id and client.get_run(run_id).data.tags["prefect_hpo.flow_run_id"] == "run-2"
    assert "prefect_hpo.flow_run_url" not in client.get_run(tracker.start_trial_run(parent, 1, {"lr": 0.02}, "gp")).data.tags
