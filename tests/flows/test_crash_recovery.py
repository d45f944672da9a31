"""Crash recovery for real: SIGKILL a running HPO driver, resume it, and count what ran.

The driver is the real CLI in a subprocess (against the session's Prefect server), its trials
are real processes, MLflow is a SQLite file and the S3 store is moto's server on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from flowkit import events, make_spec
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import LeaseHeldError
from prefect_hpo.flows.driver import close_runtime, open_runtime
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.lease import _takeover_reason
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(300)


def _read(storage: str, name: str) -> ExperimentState | None:
    store = open_store(storage)
    text = store.read(name)
    return None if text is None else ExperimentState.from_json(text, store.location(name))


def _wait_for(storage: str, name: str, driver: subprocess.Popen, timeout_s: float = 150) -> ExperimentState:
    """Until some trials completed while others run (and have a process to kill)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver exited early: {driver.stdout.read() if driver.stdout else ''}"
        state = _read(storage, name)
        if state is not None:
            statuses = Counter(t.status.value for t in state.experiment.trials)
            running = [t for t in state.experiment.trials if t.status.value == "running" and t.metadata.get("handle")]
            if statuses["completed"] >= 2 and running:
                return state
        time.sleep(0.1)
    raise AssertionError("the driver made no progress in time")


@pytest.mark.slow
@pytest.mark.e2e  # a killed CLI driver and a resume, per store: ~25 s each
@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_sigkilled_driver_resumes_without_losing_or_repeating_trials(
    store_kind: str, workspace: Path, prefect_api: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = "file://ckpt" if store_kind == "local" else request.getfixturevalue("s3_uri")
    name = f"crash-{store_kind}"
    budget = 8
    spec = make_spec(name, budget={"trials": budget, "max_parallel": 2}, storage=storage)
    (workspace / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("TRIAL_SLEEP", "1.0")
    monkeypatch.setenv("TRIAL_STEPS", "4")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    driver = subprocess.Popen(
        [sys.executable, "-m", "prefect_hpo.cli", "run", "spec.json", "--quiet"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        state = _wait_for(storage, name, driver)
        # A second driver is refused while the first one drives. It is tried through
        # open_runtime, the flow's first step, rather than a whole flow run: starting a flow run
        # can take longer on a loaded machine than the first driver needs to finish (two CI
        # runs failed that way: the first driver had released its lease by then).
        lease_before = open_store(storage).read_lease(name)
        try:
            second = open_runtime(None, name=name, storage=storage, resume=True)
        except LeaseHeldError:
            pass
        else:  # say why, so a failure on another machine can be understood from its log alone
            close_runtime(second, write=False)
            alive = driver.poll() is None
            if not alive and driver.stdout:
                output = driver.stdout.read()
            else:
                output = "(still running)"
            reason = _takeover_reason(lease_before, time.time())
            pytest.fail(f"a second driver was let in; first driver alive: {alive}; lease before: "
                        f"{lease_before} (judged now: {reason or 'must be respected'}); test pid {os.getpid()}, now {time.time():.1f}; "
                        f"first driver's output:\n{output}")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)

    # The driver is gone; its trial processes are not. Make one of them vanish as well (as if
    # its machine had rebooted): it must be run again, with the same parameters.
    state = _read(storage, name)
    assert state is not None
    running = [t for t in state.experiment.trials if t.status.value == "running" and t.metadata.get("handle")]
    assert running, "expected a trial still running at the kill"
    victim = None
    for candidate in sorted(running, key=lambda t: t.started_at, reverse=True):  # the youngest is least likely done
        if any(kind == "end" and i == candidate.index for kind, i, _, _ in events(workspace)):
            continue  # its program already ended: its wrapper may still be there, but it is done
        try:
            os.killpg(candidate.metadata["handle"]["pgid"], signal.SIGKILL)
        except ProcessLookupError:  # it finished meanwhile: resume must collect it, not re-run it
            continue
        victim = candidate
        break
    assert victim is not None, "every trial finished before one could be made to vanish"
    # it may still have ended in the instant before the kill (on a loaded machine): then it is
    # rightly collected, not run again, and the test checks that instead
    vanished = not any(kind == "end" and i == victim.index for kind, i, _, _ in events(workspace))
    completed_before = {t.index: t.values for t in state.experiment.trials if t.status.value == "completed"}

    best = hpo_flow(name=name, storage=storage, resume=True)

    final = _read(storage, name)
    assert final is not None
    exp = final.experiment
    assert len(exp.trials) == budget
    assert [t.status.value for t in exp.trials] == ["completed"] * budget
    assert best is not None and best["index"] == exp.best_trial.index
    for index, values in completed_before.items():  # finished work was kept as it was
        assert exp.trial(index).values == values

    log = events(workspace)
    ends = Counter(i for kind, i, _, _ in log if kind == "end")
    assert ends == Counter(range(budget)), f"some trial ran to the end twice or never: {ends}"
    starts = Counter(i for kind, i, _, _ in log if kind == "start")
    assert starts[victim.index] == (2 if vanished else 1)  # the vanished one ran again...
    assert exp.trial(victim.index).params == victim.params  # ...with the same parameters
    for other in (t for t in running if t.index != victim.index):  # re-attached or collected, not relaunched
        assert starts[other.index] == 1
    assert all(starts[i] == 1 for i in completed_before)

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    trial_runs = Counter(int(r.data.tags["prefect_hpo.trial_index"]) for r in runs if r.data.tags.get("prefect_hpo.role") == "trial")
    assert trial_runs == Counter(range(budget)), "MLflow has a duplicate or missing trial run"
    assert sum(1 for r in runs if r.data.tags.get("prefect_hpo.role") == "experiment") == 1
