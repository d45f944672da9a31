"""GPU slots through the whole flow: who gets which device, and how many trials run at once.

There is no GPU on the test machine, so the device list is fake: ``trial.gpus: ["0", "1", "2"]``
is the outermost boundary (it replaces detection), and everything below it is real. The flow
hands devices out from its pool, the local launcher puts them in ``CUDA_VISIBLE_DEVICES``, and
the trials (real processes) record what they saw and when they ran, in a JSON-lines file.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
from flowkit import make_spec

from prefect_hpo.errors import SpecError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(120)

FAKE_GPUS = ["0", "1", "2"]

# Records its devices and its start and end times (taken inside the process, so the interval
# lies within the time the launcher held the devices for it), then reports a loss.
GPU_TRIAL = textwrap.dedent(
    """
    import json, os, sys, time
    p = json.loads(os.environ["PREFECT_HPO_PARAMS"])
    start = time.time()
    time.sleep(float(os.environ.get("GPU_TRIAL_SLEEP", "1.0")))
    record = {
        "index": int(os.environ["PREFECT_HPO_TRIAL_INDEX"]),
        "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": start,
        "end": time.time(),
    }
    with open(os.path.join(os.environ["TRIAL_EVENTS_DIR"], "gpus.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\\n")
    print("PREFECT_HPO_REPORT " + json.dumps({"step": 1, "metrics": {"loss": (p["x"] - 0.3) ** 2}}), flush=True)
    """
)


def _gpu_spec(workspace: Path, name: str, *, trials: int, max_parallel: int, gpus_per_trial: int, gpus=FAKE_GPUS) -> dict:
    (workspace / "gpu_trial.py").write_text(GPU_TRIAL)
    trial = {"command": f"{shlex.quote(sys.executable)} gpu_trial.py", "gpus_per_trial": gpus_per_trial}
    if gpus is not None:
        trial["gpus"] = gpus
    return make_spec(
        name,
        parameters=[{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        budget={"trials": trials, "max_parallel": max_parallel},
        trial=trial,
    )


def _records(workspace: Path) -> list[dict]:
    path = workspace / "gpus.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _max_overlap(records: list[dict]) -> int:
    """The most trials that ran at the same instant."""
    return max(sum(1 for r in records if r["start"] <= p["start"] < r["end"]) for p in records)


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _all_completed(name: str, trials: int) -> None:
    store = open_store("file://ckpt")
    text = store.read(name)
    assert text is not None
    exp = ExperimentState.from_json(text, store.location(name)).experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * trials, [t.failure_reason for t in exp.trials]


def test_one_gpu_per_trial_runs_at_most_as_many_trials_as_gpus(workspace: Path) -> None:
    hpo_flow(spec=_gpu_spec(workspace, "gpu-one", trials=6, max_parallel=4, gpus_per_trial=1))
    _all_completed("gpu-one", 6)
    records = _records(workspace)
    assert sorted(r["index"] for r in records) == list(range(6))
    assert all(r["cvd"] in FAKE_GPUS for r in records), records  # exactly one device, from the list
    assert _max_overlap(records) == 3, records  # never 4 (max_parallel), and the 3 GPUs were all busy
    for i, a in enumerate(records):  # no device held by two trials at once
        for b in records[i + 1 :]:
            if _overlap(a, b):
                assert a["cvd"] != b["cvd"], (a, b)
    assert {r["cvd"] for r in records} == set(FAKE_GPUS)


def test_two_gpus_per_trial_out_of_three_run_one_at_a_time(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_TRIAL_SLEEP", "0.5")
    hpo_flow(spec=_gpu_spec(workspace, "gpu-two", trials=3, max_parallel=3, gpus_per_trial=2))
    _all_completed("gpu-two", 3)
    records = _records(workspace)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    for r in records:
        devices = r["cvd"].split(",")
        assert len(devices) == 2 and len(set(devices)) == 2 and set(devices) <= set(FAKE_GPUS), r
    assert _max_overlap(records) == 1, records


def test_no_gpu_per_trial_hides_every_gpu(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_TRIAL_SLEEP", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the driver's own devices must not leak in
    hpo_flow(spec=_gpu_spec(workspace, "gpu-none", trials=2, max_parallel=2, gpus_per_trial=0, gpus=None))
    _all_completed("gpu-none", 2)
    records = _records(workspace)
    assert len(records) == 2 and all(r["cvd"] == "" for r in records), records


def test_more_gpus_per_trial_than_listed_is_a_spec_error(workspace: Path) -> None:
    spec = _gpu_spec(workspace, "gpu-many", trials=2, max_parallel=1, gpus_per_trial=4)
    with pytest.raises(SpecError, match=r"trial\.gpus_per_trial") as info:
        hpo_flow(spec=spec)
    assert "4" in str(info.value) and "3" in str(info.value)  # what was asked for, what there is
    assert _records(workspace) == []  # no trial started
