"""Checkpoint documents with wrong field types or non-finite values, read back by ExperimentState."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from prefect_hpo.errors import CorruptCheckpointError
from prefect_hpo.optim.trials import TrialStatus
from prefect_hpo.spec import ExperimentSpec
from prefect_hpo.storage.state import ExperimentState

_SPEC = {
    "name": "doc",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
    "objectives": {"loss": "minimize"},
    "algorithm": "sobol",
    "seed": 0,
    "budget": {"trials": 4},
    "trial": {"command": "echo {x}"},
}


def _checkpoint() -> dict[str, Any]:
    """A real checkpoint: trial 0 completed (loss 2.0), trial 1 completed (loss 1.0), trial 2 running."""
    spec = ExperimentSpec.parse(_SPEC)
    exp = spec.build_experiment()
    for loss in (2.0, 1.0):
        trial = exp.ask()
        exp.tell(trial.index, {"loss": loss})
    running = exp.ask()
    running.metadata.update({
        "run_id": "abc123", "attempt": 1, "history": [],
        "handle": {"launcher": "local", "pid": 123, "pgid": 123, "log": "/tmp/x.log", "workdir": "/tmp/x"},
    })
    state = ExperimentState(spec, exp, parent_run_id="parent1", tracking_uri="sqlite:///m.db")
    return json.loads(state.to_json())


def _load(doc: dict[str, Any], *, allow_nan: bool = False) -> ExperimentState:
    return ExperimentState.from_json(json.dumps(doc, allow_nan=allow_nan), "mem://doc")


def test_a_valid_checkpoint_round_trips() -> None:
    state = _load(_checkpoint())
    assert state.parent_run_id == "parent1"
    assert state.experiment.best_trial.index == 1


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("mlflow",), "sqlite:///m.db", "'mlflow'"),
        (("mlflow", "parent_run_id"), 42, "'mlflow.parent_run_id'"),
        (("mlflow", "tracking_uri"), ["x"], "'mlflow.tracking_uri'"),
        (("spec",), "a spec", "'spec'"),
        (("experiment",), [], "'experiment'"),
        (("experiment", "trials"), {"0": {}}, "'experiment.trials'"),
        (("experiment", "trials", 2), "trial", "'experiment.trials[2]'"),
        (("experiment", "trials", 2, "metadata"), "meta", "'experiment.trials[2].metadata'"),
        (("experiment", "trials", 2, "metadata", "handle"), "pid 123", "'experiment.trials[2].metadata.handle'"),
        (("experiment", "trials", 2, "metadata", "handle", "pid"), "123", "'experiment.trials[2].metadata.handle.pid'"),
        (("experiment", "trials", 2, "metadata", "run_id"), 7, "'experiment.trials[2].metadata.run_id'"),
        (("experiment", "trials", 2, "metadata", "attempt"), "two", "'experiment.trials[2].metadata.attempt'"),
        (("experiment", "trials", 2, "metadata", "attempt"), True, "'experiment.trials[2].metadata.attempt'"),
        (("experiment", "trials", 2, "metadata", "history"), "none", "'experiment.trials[2].metadata.history'"),
        (("experiment", "trials", 0, "values"), [2.0], "'experiment.trials[0].values'"),
        (("experiment", "trials", 0, "values", "loss"), "two", "'experiment.trials[0].values.loss'"),
        (("experiment", "trials", 0, "values", "loss"), None, "'experiment.trials[0].values.loss'"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(path: tuple[Any, ...], value: Any, field: str) -> None:
    doc = _checkpoint()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CorruptCheckpointError) as info:
        _load(doc)
    message = str(info.value)
    assert field in message and "mem://doc" in message and "left untouched" in message, message


def test_a_handle_without_the_id_of_its_attempt_is_named() -> None:
    doc = _checkpoint()
    del doc["experiment"]["trials"][2]["metadata"]["handle"]["pid"]
    with pytest.raises(CorruptCheckpointError, match=r"handle\.pid' \(local launcher\) must be an integer, got NoneType"):
        _load(doc)


def test_a_handle_of_another_launcher_is_checked_by_its_own_fields() -> None:
    doc = _checkpoint()
    doc["experiment"]["trials"][2]["metadata"]["handle"] = {"kind": "work_pool", "flow_run_id": 17}
    with pytest.raises(CorruptCheckpointError, match=r"handle\.flow_run_id' \(work_pool launcher\) must be a string"):
        _load(doc)


@pytest.mark.parametrize("bad", [math.nan, "NaN", math.inf, "-Infinity"])
def test_a_completed_trial_with_a_non_finite_value_is_failed_never_best(bad: Any) -> None:
    doc = _checkpoint()
    doc["experiment"]["trials"][1]["values"]["loss"] = bad  # the one that was best
    state = _load(doc, allow_nan=True)
    trial = state.experiment.trial(1)
    assert trial.status is TrialStatus.FAILED
    assert trial.values is None
    assert "non-finite" in (trial.failure_reason or "") and "'loss'" in trial.failure_reason
    assert state.experiment.best_trial.index == 0


def test_an_early_stopped_trial_keeps_no_non_finite_value() -> None:
    doc = _checkpoint()
    trial = doc["experiment"]["trials"][0]
    trial.update(status="early_stopped", failure_reason="stopped early")
    trial["values"]["loss"] = math.nan
    state = _load(doc, allow_nan=True)
    assert state.experiment.trial(0).status is TrialStatus.EARLY_STOPPED
    assert state.experiment.trial(0).values is None
