"""An MLflow outage during a flow: trials go on, and MLflow ends matching the checkpoint.

The tracking server is MLflow's real one on loopback (``mlflowkit``); a helper thread kills it
once a trial has ended and, while it is down, waits for every trial of the budget to end. The
flow must keep launching, polling and checkpointing meanwhile (a stalled flow ends no trial and
the helper gives up), and once the server is back MLflow must hold exactly what the checkpoint
says: one child run per trial with its status, metrics and tags, and the parent run closed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from mlflowkit import MlflowServer, nothing_listening

from flowkit import events, make_spec
from prefect_hpo.errors import StorageError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState
from prefect_hpo.storage.tracking import is_pending_run

BUDGET = 6


class Outage(threading.Thread):
    """Stops the server after the first trial ended; starts it again (if ``restart``) only once
    every trial of the budget has ended, so those trials provably ended while MLflow was down."""

    def __init__(self, server: MlflowServer, workspace: Path, *, restart: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.workspace, self.restart = server, workspace, restart
        self.starts_before_stop: int | None = None
        self.ended_before_stop = 0
        self.ended_while_down = 0
        self.error: BaseException | None = None

    def _count(self, kind: str) -> int:
        return sum(1 for e in events(self.workspace) if e[0] == kind)

    def _wait(self, kind: str, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._count(kind) >= n:
                return True
            time.sleep(0.05)
        return False

    def run(self) -> None:
        try:
            if not self._wait("end", 1, 180):
                return
            self.server.stop()
            self.starts_before_stop = self._count("start")
            self.ended_before_stop = self._count("end")
            self._wait("end", BUDGET, 180)
            self.ended_while_down = self._count("end") - self.ended_before_stop
            if self.restart:
                self.server.start()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _state(name: str) -> ExperimentState:
    store = open_store("file://ckpt")
    text = store.read(name)
    assert text is not None
    return ExperimentState.from_json(text, store.location(name))


def _mismatches(uri: str, state: ExperimentState) -> list[str]:
    """How MLflow differs from the checkpoint (empty: it matches)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(state.spec.name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    children: dict[int, list] = {}
    for run in runs:
        if run.data.tags.get("prefect_hpo.role") == "trial":
            children.setdefault(int(run.data.tags["prefect_hpo.trial_index"]), []).append(run)
    wrong = []
    status_of = {"completed": "FINISHED", "failed": "FAILED", "early_stopped": "KILLED", "abandoned": "KILLED"}
    for trial in state.experiment.trials:
        runs_of = children.get(trial.index, [])
        if len(runs_of) != 1:
            wrong.append(f"trial {trial.index}: {len(runs_of)} runs")
            continue
        run = runs_of[0]
        if run.info.run_id != trial.metadata.get("run_id"):
            wrong.append(f"trial {trial.index}: checkpoint names run {trial.metadata.get('run_id')}, MLflow has {run.info.run_id}")
        if run.info.status != status_of.get(trial.status.value, "RUNNING"):
            wrong.append(f"trial {trial.index}: {run.info.status} in MLflow, {trial.status.value} in the checkpoint")
        if run.data.tags.get("prefect_hpo.status") != trial.status.value:
            wrong.append(f"trial {trial.index}: status tag {run.data.tags.get('prefect_hpo.status')}")
        want = [(r["step"], r["metrics"]["loss"]) for r in trial.metadata.get("history", []) if "loss" in r["metrics"]]
        have = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        if have != sorted(want):
            wrong.append(f"trial {trial.index}: loss history {have} in MLflow, {want} in the checkpoint")
    parent = client.get_run(state.parent_run_id)
    if parent.info.status != "FINISHED":
        wrong.append(f"parent run {parent.info.status}")
    return wrong


def _outage_spec(name: str, uri: str) -> dict:
    return make_spec(name, budget={"trials": BUDGET, "max_parallel": 2}, tracking_uri=uri)


def _run_through_outage(workspace: Path, server: MlflowServer, name: str, *, restart: bool) -> tuple[Outage, ExperimentState]:
    outage = Outage(server, workspace, restart=restart)
    outage.start()
    try:
        hpo_flow(spec=_outage_spec(name, server.uri))
    finally:
        outage.join(240)
    assert outage.error is None, outage.error
    return outage, _state(name)


@pytest.fixture
def trial_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAL_STEPS", "3")
    monkeypatch.setenv("TRIAL_SLEEP", "0.3")


@pytest.mark.slow
@pytest.mark.e2e  # a tracking server stopped and restarted under a running flow
@pytest.mark.parametrize("kind", ["app", "cli"])
def test_trials_go_on_while_mlflow_is_down_and_mlflow_matches_the_checkpoint_after(
    workspace: Path, trial_pace: None, kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_hpo")
    monkeypatch.setenv("PREFECT_HPO_MLFLOW_DRAIN_S", "120")  # the server comes back while the flow drains
    server = MlflowServer(workspace / "mlflow-server", kind=kind)
    server.start()
    try:
        outage, state = _run_through_outage(workspace, server, f"outage-{kind}", restart=True)
        assert server.running
        assert [t.status.value for t in state.experiment.trials] == ["completed"] * BUDGET
        # the flow kept going: trials were launched with MLflow down, and every trial not ended
        # before the stop ended while it was down (the server came back only after that)
        assert outage.starts_before_stop is not None and outage.starts_before_stop < BUDGET
        assert outage.ended_before_stop + outage.ended_while_down == BUDGET
        assert not any(is_pending_run(t.metadata.get("run_id")) for t in state.experiment.trials)
        assert _mismatches(server.uri, state) == []
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("prefect_hpo")]
        assert sum("is unreachable" in m for m in messages) == 1, messages
        assert sum(" is back: " in m for m in messages) == 1, messages
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.e2e
def test_mlflow_still_down_at_the_end_is_repaired_by_resume(
    workspace: Path, trial_pace: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_hpo")
    monkeypatch.setenv("PREFECT_HPO_MLFLOW_DRAIN_S", "1")
    server = MlflowServer(workspace / "mlflow-server")
    server.start()
    try:
        outage, state = _run_through_outage(workspace, server, "outage-resume", restart=False)
        assert [t.status.value for t in state.experiment.trials] == ["completed"] * BUDGET
        assert any("lags the checkpoint" in r.getMessage() for r in caplog.records)
        assert outage.ended_before_stop + outage.ended_while_down == BUDGET
        server.start()
        left = _mismatches(server.uri, state)
        assert left, "the outage should have left MLflow behind the checkpoint"
        monkeypatch.setenv("PREFECT_HPO_MLFLOW_DRAIN_S", "60")
        hpo_flow(spec=_outage_spec("outage-resume", server.uri), resume=True)
        after = _state("outage-resume")
        assert _mismatches(server.uri, after) == [], left
        assert len([e for e in events(workspace) if e[0] == "start"]) == BUDGET  # nothing ran twice
    finally:
        server.stop()


def test_an_unreachable_tracking_server_fails_the_flow_at_start(workspace: Path) -> None:
    uri = nothing_listening()
    with pytest.raises(StorageError, match=uri):
        hpo_flow(spec=make_spec("nobody-home", tracking_uri=uri))
    assert events(workspace) == []
