"""Resume from MLflow alone (the checkpoint is lost) after the driver was killed: nothing runs twice.

The driver is the real CLI in a subprocess, its trials are real processes, MLflow is a SQLite
file. It is SIGKILLed while trials run; they finish with no driver watching, so MLflow still
shows them RUNNING. Then the checkpoint is deleted (as when S3 restarts empty) and the experiment
resumed: the rebuild must collect those trials' results from their attempt folders (the
handle.json each launch leaves there) instead of running them again.
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

from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]  # a killed CLI driver


def _read(storage: str, name: str) -> ExperimentState | None:
    store = open_store(storage)
    text = store.read(name)
    return None if text is None else ExperimentState.from_json(text, store.location(name))


def _mlflow_statuses(workspace: Path, name: str) -> dict[int, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    return {int(r.data.tags["prefect_hpo.trial_index"]): r.data.tags.get("prefect_hpo.status", "")
            for r in runs if r.data.tags.get("prefect_hpo.role") == "trial"}


def test_rebuild_from_mlflow_collects_trials_that_finished_unwatched(
    workspace: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, name, budget = "file://ckpt", "rebuilt", 6
    spec = make_spec(name, budget={"trials": budget, "max_parallel": 2}, storage=storage)
    (workspace / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("TRIAL_SLEEP", "0.7")
    monkeypatch.setenv("TRIAL_STEPS", "4")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    driver = subprocess.Popen(
        [sys.executable, "-m", "prefect_hpo.cli", "run", "spec.json", "--quiet"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 150
        while True:  # until one trial completed and others run (they have a process)
            assert driver.poll() is None, f"the driver exited early: {driver.stdout.read() if driver.stdout else ''}"
            assert time.monotonic() < deadline, "the driver made no progress in time"
            state = _read(storage, name)
            if state is not None:
                trials = state.experiment.trials
                running = [t.index for t in trials if t.status.value == "running" and t.metadata.get("handle")]
                if running and sum(t.status.value == "completed" for t in trials) >= 1:
                    break
            time.sleep(0.1)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)

    deadline = time.monotonic() + 60  # the orphaned trials run to their end, unwatched
    while not all(any(k == "end" and i == index for k, i, _, _ in events(workspace)) for index in running):
        assert time.monotonic() < deadline, f"trials {running} did not finish: {events(workspace)}"
        time.sleep(0.2)
    # what the rebuild will read: those MLflow still shows running ran unwatched (one that ended
    # just before the kill may be completed in MLflow already, its checkpoint not yet written)
    statuses = _mlflow_statuses(workspace, name)
    unwatched = [i for i in running if statuses[i] == "running"]
    assert unwatched, statuses
    (workspace / "ckpt" / name / "experiment.json").unlink()  # the checkpoint is lost

    best = hpo_flow(name=name, resume=True, storage=storage)

    final = _read(storage, name)
    assert final is not None and best is not None
    assert [t.status.value for t in final.experiment.trials] == ["completed"] * budget
    starts = Counter(i for kind, i, _, _ in events(workspace) if kind == "start")
    assert starts == Counter(range(budget)), f"a trial ran twice or never (trials {unwatched} ran unwatched): {starts}"
    for index in running:  # their results came from their own attempt, the one that ran
        assert final.experiment.trial(index).metadata["attempt"] == 1
    assert set(_mlflow_statuses(workspace, name).values()) == {"completed"}
