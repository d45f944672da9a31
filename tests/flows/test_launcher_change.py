"""Resuming an experiment whose spec moved it to another launcher while trials were in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowkit import make_spec

from prefect_hpo.errors import SpecError
from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.spec import load_spec
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState


def _checkpoint_with_a_running_trial(spec: dict[str, Any], handle: dict[str, Any]) -> None:
    """What a flow killed mid-run leaves behind: trial 0 launched by some launcher, in flight."""
    loaded = load_spec(spec)
    state = ExperimentState(loaded, loaded.build_experiment())
    trial = state.experiment.ask()
    state.experiment.mark_running(trial.index)
    trial.metadata.update({"attempt": 1, "handle": handle, "history": []})
    open_store("file://ckpt").write(loaded.name, state.to_json())


def _state(name: str) -> ExperimentState:
    text = open_store("file://ckpt").read(name)
    assert text is not None
    return ExperimentState.from_json(text, name)


def test_trials_that_may_still_run_elsewhere_block_a_launcher_switch(workspace: Path) -> None:
    spec = make_spec("switch", budget={"trials": 2, "max_parallel": 1})
    _checkpoint_with_a_running_trial(spec, {"launcher": "local", "pid": 999999, "workdir": "gone"})
    moved = {**spec, "trial": {**spec["trial"], "work_pool": {"deployment": "prefect-hpo-trial/process"}}}
    with pytest.raises(SpecError, match=r"trials 0 on the 'local' launcher.*prefect-hpo resume switch"):
        hpo_flow(spec=moved)
    state = _state("switch")  # the refusal changed nothing
    assert state.spec.trial.work_pool is None
    assert state.experiment.trial(0).metadata["handle"]["launcher"] == "local"


def test_trials_that_died_with_the_old_flow_run_again_on_the_new_launcher(workspace: Path) -> None:
    spec = make_spec("from-thread", budget={"trials": 2, "max_parallel": 1})
    _checkpoint_with_a_running_trial(spec, {"launcher": "inprocess", "key": "0-1", "log": "gone", "started_at": 0.0})
    hpo_flow(spec=spec)  # the local launcher now
    exp = _state("from-thread").experiment
    assert [t.status.value for t in exp.trials] == ["completed", "completed"]
    assert exp.trial(0).metadata["attempt"] == 2  # a new attempt, not a re-attach
