"""Early stopping through the whole flow: a clearly worse trial is stopped, for real.

Everything is real except the GPU list: ``trial.gpus: ["0"]`` stands in for detection (there is
no GPU here), so the one device is the slot that must be handed on. The trials are processes
that record their pid, their devices and every report with its time; the policy is ASHA with
its settings from the spec; the CLI's ``status --json`` and MLflow are read back afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flowkit import make_spec
from processes import gone
from mlflow.tracking import MlflowClient

from prefect_hpo.flows.hpo import hpo_flow

pytestmark = pytest.mark.timeout(180)

# The loss depends on the trial's index, so which trial is "clearly worse" is known up front:
# trial 1 is five units worse at every step; trial 2 is the best. The number of epochs comes
# from the command line, where the policy's resource parameter put it.
CURVE_TRIAL = textwrap.dedent(
    """
    import argparse, json, os, time
    from prefect_hpo.trial import get_params, report

    args = argparse.ArgumentParser()
    args.add_argument("--epochs", type=int, required=True)
    epochs = args.parse_args().epochs
    index = int(os.environ["PREFECT_HPO_TRIAL_INDEX"])
    base = {0: 0.5, 1: 5.0, 2: 0.2}.get(index, 1.0)
    log = os.path.join(os.environ["TRIAL_EVENTS_DIR"], "curves.jsonl")
    def record(**kw):
        with open(log, "a") as f:
            f.write(json.dumps({"index": index, "time": time.time(), **kw}) + "\\n")
    record(kind="start", pid=os.getpid(), cvd=os.environ.get("CUDA_VISIBLE_DEVICES"), epochs=epochs,
           params_epochs=get_params().get("epochs"))
    for epoch in range(1, epochs + 1):
        time.sleep(0.15)
        loss = base + 1.0 / epoch
        record(kind="report", step=epoch)  # first: the kill may land right after the report
        report(step=epoch, val_loss=loss)
    record(kind="end")
    """
)


def _records(workspace: Path) -> list[dict]:
    return [json.loads(line) for line in (workspace / "curves.jsonl").read_text().splitlines()]


def test_asha_stops_the_worse_trial_kills_it_and_hands_its_gpu_on(workspace: Path) -> None:
    (workspace / "curve_trial.py").write_text(CURVE_TRIAL)
    spec = make_spec(
        "asha-e2e",
        parameters=[{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        budget={"trials": 3, "max_parallel": 1},
        trial={
            "command": f"{shlex.quote(sys.executable)} curve_trial.py --epochs {{epochs}}",
            "gpus_per_trial": 1,
            "gpus": ["0"],  # the fake boundary: one "GPU", so a slot must be freed to go on
            "poll_interval_s": 0.2,
        },
        stopping={"policy": "asha", "min_steps": 1, "reduction_factor": 3, "max_steps": 9, "resource": "epochs"},
    )
    spec["objectives"] = {"val_loss": "minimize"}  # replaced, not merged into make_spec's
    best = hpo_flow(spec=spec)

    records = _records(workspace)
    starts = {r["index"]: r for r in records if r["kind"] == "start"}
    ends = {r["index"] for r in records if r["kind"] == "end"}
    reported = {i: max((r["step"] for r in records if r["kind"] == "report" and r["index"] == i), default=0) for i in starts}

    # every trial got the policy's resource, on its command line and in its parameters
    assert all(s["epochs"] == 9 and s["params_epochs"] == 9 for s in starts.values())
    assert all(s["cvd"] == "0" for s in starts.values())  # the one device, handed on each time
    # trial 1 is worse than trial 0 at rung 1 and is stopped there; the others train fully
    assert ends == {0, 2}
    assert reported[1] < 3, f"trial 1 trained to step {reported[1]} before being stopped"
    assert reported[0] == reported[2] == 9
    assert gone(starts[1]["pid"])  # its process is really gone, not just forgotten
    condemned = next(r["time"] for r in records if r["kind"] == "report" and r["index"] == 1 and r["step"] == 1)
    assert starts[2]["time"] > condemned  # the slot went to trial 2 only after trial 1 was stopped
    assert best is not None and best["index"] == 2

    status = subprocess.run(
        [sys.executable, "-m", "prefect_hpo.cli", "status", "asha-e2e", "--storage", "file://ckpt", "--json"],
        cwd=workspace, capture_output=True, text=True, check=True,
    )
    doc = json.loads(status.stdout)
    rows = {row["index"]: row for row in doc["trials"]}
    assert [rows[i]["status"] for i in range(3)] == ["completed", "early_stopped", "completed"]
    assert rows[1]["stopped_by"] == "asha(min_steps=1, reduction_factor=3, max_steps=9)"
    assert rows[1]["failure_reason"].startswith("asha on val_loss: ") and "rung 1" in rows[1]["failure_reason"]
    # what the flow saw of its curve: up to the step it was about to report when it was killed
    # (a report printed between the poll and the kill is collected too)
    assert 1 <= rows[1]["last_step"] <= reported[1]
    assert rows[1]["values"] == {"val_loss": pytest.approx(5.0 + 1.0 / rows[1]["last_step"])}  # its last report, as Ax does
    assert doc["counts"] == {"completed": 2, "early_stopped": 1}
    assert doc["stopping"]["rule"] == "asha(min_steps=1, reduction_factor=3, max_steps=9)"

    text = subprocess.run(
        [sys.executable, "-m", "prefect_hpo.cli", "status", "asha-e2e", "--storage", "file://ckpt"],
        cwd=workspace, capture_output=True, text=True, check=True,
    ).stdout
    assert "stopping: asha(min_steps=1, reduction_factor=3, max_steps=9) on val_loss (minimize)" in text
    assert "early_stopped" in text

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("asha-e2e").experiment_id])
    stopped = next(r for r in runs if r.data.tags.get("prefect_hpo.trial_index") == "1")
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["prefect_hpo.status"] == "early_stopped"
    assert stopped.data.tags["prefect_hpo.stopped_by"] == "asha(min_steps=1, reduction_factor=3, max_steps=9)"
    assert stopped.data.tags["prefect_hpo.failure_reason"] == rows[1]["failure_reason"]
    history = client.get_metric_history(stopped.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, rows[1]["last_step"] + 1))  # its curve is kept

    # the rung judgments are in the checkpoint, so a resumed flow judges the same way
    checkpoint = json.loads((workspace / "ckpt" / "asha-e2e" / "experiment.json").read_text())
    assert checkpoint["stopping"]["policy"] == "asha(min_steps=1, reduction_factor=3, max_steps=9)"
    assert checkpoint["stopping"]["state"]["rungs"]["1"].keys() == {"0", "1", "2"}
