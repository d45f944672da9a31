"""The spec's ``stopping`` section: validation that names the field, and the policy's memory
across a checkpoint (what a resumed flow starts from). No Prefect needed."""

from __future__ import annotations

import json

import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.flows.driver import _stopping_policy
from prefect_hpo.optim.stopping import MetricHistory
from prefect_hpo.spec import load_spec
from prefect_hpo.storage.state import ExperimentState

BASE = {
    "name": "s",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}, {"name": "epochs", "type": "fixed", "value": 5}],
    "objectives": {"val_loss": "minimize"},
    "budget": {"trials": 4},
    "trial": {"command": "python train.py --epochs {epochs} --x {x}"},
}


def spec_with(stopping: dict) -> dict:
    return {**BASE, "stopping": stopping}


def test_the_contract_example_loads_and_builds_its_policy() -> None:
    spec = load_spec(spec_with({"policy": "asha", "metric": "val_loss", "min_steps": 1, "reduction_factor": 3, "max_steps": 27}))
    policy = spec.stopping.build()
    assert policy.describe() == "asha(min_steps=1, reduction_factor=3, max_steps=27)"
    assert spec.stopping_metric == ("val_loss", True)


def test_no_stopping_section_means_no_policy() -> None:
    spec = load_spec(BASE)
    assert spec.stopping.policy == "none" and spec.stopping.build().decide([], minimize=True) == []


@pytest.mark.parametrize(
    ("stopping", "message"),
    [
        ({"policy": "ashaa"}, r"stopping.policy: 'ashaa' is unknown \(available: asha, hyperband, median, none, percentile, threshold\)"),
        ({"policy": "asha"}, r"stopping.max_steps: required by policy 'asha'"),
        ({"policy": "asha", "max_steps": 9, "reduction_factor": 1}, r"stopping.reduction_factor"),
        ({"policy": "threshold"}, r"stopping.threshold: .*required"),
        ({"policy": "median", "threshold": 1.0}, r"policy 'median' does not take these settings \['threshold'\]"),
        ({"policy": "asha", "max_steps": 9, "bogus": 1}, r"stopping.bogus: unknown field"),
        ({"policy": "median", "metric": "acc"}, r"stopping.mode: required when stopping.metric \('acc'\) is not an objective"),
        ({"policy": "none", "resource": "epochs"}, r"stopping.resource: 'epochs' needs stopping.max_steps"),
        ({"policy": "asha", "max_steps": 9, "resource": "x"}, r"stopping.resource: 'x' is a searched parameter"),
    ],
)
def test_bad_stopping_settings_name_the_field(stopping: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with(stopping))


def test_a_watched_metric_that_is_not_an_objective_takes_its_mode() -> None:
    spec = load_spec(spec_with({"policy": "median", "metric": "val_acc", "mode": "maximize"}))
    assert spec.stopping_metric == ("val_acc", False)


def test_the_resource_may_be_a_fixed_parameter_or_a_new_name_in_the_command() -> None:
    load_spec(spec_with({"policy": "asha", "max_steps": 9, "resource": "epochs"}))  # the fixed one
    doc = {**spec_with({"policy": "asha", "max_steps": 9, "resource": "steps"}), "trial": {"command": "train --steps {steps}"}}
    assert load_spec(doc).stopping.resource == "steps"
    with pytest.raises(SpecError, match=r"placeholder\(s\) \{steps\} name no parameter"):
        load_spec({**BASE, "trial": {"command": "train --steps {steps}"}})  # no resource: unknown


def test_the_policy_memory_survives_the_checkpoint_and_is_dropped_when_the_policy_changes() -> None:
    spec = load_spec(spec_with({"policy": "asha", "min_steps": 1, "reduction_factor": 2, "max_steps": 8}))
    state = ExperimentState(spec, spec.build_experiment())
    policy = _stopping_policy(state)
    # trial 1 reaches rung 1 first, alone: the first arrival always continues
    assert policy.decide([MetricHistory(1, {1: 0.9}, running=True)], minimize=True) == []
    state.stopping = {"policy": policy.describe(), "state": policy.state_dict()}
    restored_state = ExperimentState.from_json(state.to_json(), "test")

    # then trial 0 arrives, better. Judged once on arrival, trial 1 is not judged again...
    later = [MetricHistory(0, {1: 0.5}, running=True), MetricHistory(1, {1: 0.9}, running=True)]
    assert _stopping_policy(restored_state).decide(later, minimize=True) == []
    # ...while a policy without that memory would judge it now, and stop it
    changed = spec.model_copy(update={"stopping": spec.stopping.model_copy(update={"max_steps": 9})})
    restored_state.spec = changed  # other settings: it starts with no memory of the old rungs
    fresh = _stopping_policy(restored_state)
    assert [d.index for d in fresh.decide(later, minimize=True)] == [1]
    assert json.loads(json.dumps(fresh.state_dict())) == fresh.state_dict()
