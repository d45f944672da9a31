"""Rebuild an experiment from MLflow alone, for when its checkpoint is gone.

MLflow holds the spec (an artifact of the parent run) and, per trial, the typed parameters,
status and final values (tags and metrics of the child runs). That is enough to restore every
finished trial, so none is repeated; unfinished ones are re-run with the same parameters.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.spec import ExperimentSpec
from prefect_hpo.storage.state import ExperimentState
from prefect_hpo.storage.tracking import MlflowTracker

__all__ = ["rebuild_from_mlflow"]

logger = logging.getLogger(__name__)


def rebuild_from_mlflow(tracker: MlflowTracker, spec: ExperimentSpec | None = None) -> ExperimentState | None:
    """The experiment as MLflow knows it, or None when MLflow has no parent run for it."""
    parent = tracker.find_experiment_run()
    if parent is None:
        return None
    stored = ExperimentSpec.parse(tracker.load_spec(parent))
    if spec is not None and _search_part(spec) != _search_part(stored):
        raise SpecError(
            f"experiment {stored.name!r}: the spec differs from the one MLflow recorded (parameters, "
            "objectives, algorithm or seed); give the new experiment another name"
        )
    spec = spec or stored
    exp = spec.build_experiment()
    records = sorted(tracker.trial_records(parent), key=lambda r: r.index)
    for rec in records:
        trial = exp.attach_trial(rec.params)
        trial.suggester = rec.suggester
        trial.metadata.update({"run_id": rec.run_id, "attempt": rec.attempt, "handle": None, "history": [], "attempts": []})
        if rec.index != trial.index:
            logger.warning("MLflow trial %d is restored as trial %d (a gap in the recorded indices)", rec.index, trial.index)
            trial.metadata["mlflow_index"] = rec.index
        if rec.status == "completed" and rec.values:
            exp.mark_running(trial.index)
            exp.tell(trial.index, rec.values)
        elif rec.status == "early_stopped":
            exp.mark_running(trial.index)
            exp.stop_early(trial.index, rec.values, rec.failure_reason or "stopped early")
        elif rec.status == "failed":
            exp.mark_running(trial.index)
            exp.tell(trial.index, failed=rec.failure_reason or "failed")
        elif rec.status == "abandoned":
            exp.abandon(trial.index, rec.failure_reason)
        else:  # running, retrying or pending when the record was last written: run it again
            trial.metadata["attempt"] = rec.attempt
    # Continue the suggester's sequence instead of restarting it (a restarted Sobol sequence would
    # propose the points already evaluated): its position is the number of points it produced.
    doc = exp.to_dict()
    doc["ask_calls"] = len(records)
    doc["suggester_state"] = _with_position(doc["suggester_state"], sum(1 for r in records if r.suggester == "sobol"))
    restored = Experiment.from_dict(doc)
    logger.warning("experiment %r rebuilt from MLflow run %s: %d trials", spec.name, parent, len(records))
    return ExperimentState(spec, restored, parent_run_id=parent, tracking_uri=tracker.tracking_uri)


def _search_part(spec: ExperimentSpec) -> dict[str, Any]:
    d = spec.to_dict()
    keys = ("name", "parameters", "parameter_constraints", "objectives", "outcome_constraints", "algorithm", "algorithm_options", "seed")
    return {k: d.get(k) or None for k in keys}  # a missing list and an empty one are the same search


def _with_position(state: Any, position: int) -> Any:
    if isinstance(state, dict):
        return {k: (position if k == "position" else _with_position(v, position)) for k, v in state.items()}
    return state
