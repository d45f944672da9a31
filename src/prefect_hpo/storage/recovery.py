"""Rebuild an experiment from MLflow alone, for when its checkpoint is gone.

MLflow holds the spec (an artifact of the parent run) and, per trial, the parameters (params,
typed with the spec's search space), status (tags) and final values (metrics). That is enough to restore every
finished trial, so none is repeated; a trial MLflow saw running is collected from its attempt
folder when its process left one (it may have finished with no driver watching), else re-run
with the same parameters.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from prefect_hpo.errors import ExperimentNotFoundError, SpecError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.spec import ExperimentSpec
from prefect_hpo.storage.mlflow_values import compact_json
from prefect_hpo.storage.state import ExperimentState
from prefect_hpo.storage.tracking import MlflowTracker
from prefect_hpo.storage.trial_run import run_of

__all__ = ["rebuild_from_mlflow"]

logger = logging.getLogger(__name__)


def rebuild_from_mlflow(
    tracker: MlflowTracker, spec: ExperimentSpec | None = None, *, name: str | None = None
) -> ExperimentState | None:
    """The experiment as MLflow knows it, or None when MLflow has no parent run for it.

    A parent run without its spec (the flow was killed between creating the run and logging
    ``spec.json``) is continued when a spec is given, which is recorded on it then, so the
    experiment keeps one parent run; without a spec there is nothing to rebuild from, and the
    :class:`ExperimentNotFoundError` says to start it with ``prefect-hpo run SPEC``.
    """
    parent = tracker.find_experiment_run()
    if parent is None:
        return None
    raw = tracker.load_spec(parent)
    if raw is None:
        if spec is None:
            shown = name or tracker.experiment_name
            raise ExperimentNotFoundError(
                f"experiment {shown!r}: no checkpoint, and its MLflow run {parent} has no spec.json (the flow "
                f"was stopped before its first checkpoint); start it with `prefect-hpo run SPEC`, which "
                "continues that run"
            )
        logger.warning("experiment %r: MLflow run %s has no spec (its flow was stopped while creating it); "
                       "continuing it with the given spec", spec.name, parent)
        _record_spec(tracker, parent, spec)
        raw = spec.to_dict()
    stored = ExperimentSpec.parse(raw)
    if spec is not None and _search_part(spec) != _search_part(stored):
        raise SpecError(
            f"experiment {stored.name!r}: the spec differs from the one MLflow recorded (parameters, "
            "objectives, algorithm or seed); give the new experiment another name"
        )
    spec = spec or stored
    exp = spec.build_experiment()
    records = sorted(tracker.trial_records(parent, space=exp.space, metric_names=exp.metric_names), key=lambda r: r.index)
    for rec in records:
        trial = exp.attach_trial(rec.params)
        trial.suggester = rec.suggester
        run = run_of(trial)
        run.reset(run_id=rec.run_id, attempt=rec.attempt)
        if rec.index != trial.index:
            logger.warning("MLflow trial %d is restored as trial %d (a gap in the recorded indices)", rec.index, trial.index)
            run.remember_mlflow_index(rec.index)
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
        elif rec.status == "running":
            # Attempt N was opened in MLflow and may have started, even finished, after the last
            # record. Leave it unlaunched (N - 1): the driver then adopts attempt N's folder
            # (handle.json) and collects its exit status and log, or launches N if none started.
            run.reset(run_id=rec.run_id, attempt=max(0, rec.attempt - 1))
        else:  # retrying or pending when the record was last written: run its next attempt
            run.reset(run_id=rec.run_id, attempt=rec.attempt)
    # Continue the suggester's sequence instead of restarting it (a restarted Sobol sequence would
    # propose the points already evaluated): its position is the number of points it produced.
    doc = exp.to_dict()
    doc["ask_calls"] = len(records)
    doc["suggester_state"] = _with_position(doc["suggester_state"], sum(1 for r in records if r.suggester == "sobol"))
    restored = Experiment.from_dict(doc)
    logger.warning("experiment %r rebuilt from MLflow run %s: %d trials", spec.name, parent, len(records))
    return ExperimentState(spec, restored, parent_run_id=parent, tracking_uri=tracker.tracking_uri)


def _record_spec(tracker: MlflowTracker, parent: str, spec: ExperimentSpec) -> None:
    """Log ``spec.json`` and ``search_space.json`` on a parent run that lacks them, as
    ``start_experiment_run`` would have, so a later rebuild finds them."""
    space = spec.build_experiment().space.to_list()
    with tempfile.TemporaryDirectory(prefix="prefect-hpo-spec-") as tmp:
        for file_name, content in (("spec.json", spec.to_dict()), ("search_space.json", space)):
            path = Path(tmp) / file_name
            path.write_text(compact_json(content), encoding="utf-8")
            tracker.log_experiment_file(parent, path)


def _search_part(spec: ExperimentSpec) -> dict[str, Any]:
    d = spec.to_dict()
    keys = ("name", "parameters", "parameter_constraints", "objectives", "outcome_constraints", "algorithm", "algorithm_options", "seed")
    return {k: d.get(k) or None for k in keys}  # a missing list and an empty one are the same search


def _with_position(state: Any, position: int) -> Any:
    if isinstance(state, dict):
        return {k: (position if k == "position" else _with_position(v, position)) for k, v in state.items()}
    return state
