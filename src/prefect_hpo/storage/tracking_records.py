"""Reading trials back from their MLflow child runs, to rebuild an experiment whose checkpoint is lost.

What :class:`~prefect_hpo.storage.tracking.MlflowTracker` writes on a child run is read here:
its index, status and attempt tags, its params (the ``prefect_hpo.params`` JSON tag when the run
has one, else MLflow's string params typed by the search space) and its final values (the
``prefect_hpo.values`` tag, else the run's metrics). Nothing here talks to MLflow itself: a
params document stored as an artifact is fetched through the callback it is given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prefect_hpo.optim.space import SearchSpace
from prefect_hpo.storage.mlflow_params import ParamsNotRecoverableError, params_from_strings
from prefect_hpo.storage.mlflow_values import from_store

__all__ = ["ARTIFACT_MARKER", "STATUSES", "VALUES_IN_METRICS", "TrialRecord", "newest_per_index", "trial_record"]

logger = logging.getLogger(__name__)

INDEX_TAG = "prefect_hpo.trial_index"
PARAMS_TAG = "prefect_hpo.params"
VALUES_TAG = "prefect_hpo.values"
STATUS_TAG = "prefect_hpo.status"
ATTEMPT_TAG = "prefect_hpo.attempt"
SUGGESTER_TAG = "prefect_hpo.suggester"
REASON_TAG = "prefect_hpo.failure_reason"
#: A params JSON too long for a tag is stored as an artifact; the tag then holds this marker and its path.
ARTIFACT_MARKER = "@artifact:"
VALUES_IN_METRICS = {"completed", "early_stopped"}  # statuses whose values are read from the metrics
STATUSES = {"pending", "running", "completed", "early_stopped", "failed", "abandoned"}
# Used only when a child run has no (valid) status tag, e.g. one created by hand.
_FROM_MLFLOW_STATUS = {
    "RUNNING": "running",
    "SCHEDULED": "pending",
    "FINISHED": "completed",
    "FAILED": "failed",
    "KILLED": "abandoned",
}

T = TypeVar("T")


@dataclass(frozen=True)
class TrialRecord:
    """What MLflow knows about one trial, enough to rebuild an experiment whose checkpoint is lost."""

    index: int
    run_id: str
    params: dict[str, Any]
    suggester: str
    status: str
    values: dict[str, float] | None
    failure_reason: str | None
    attempt: int


def newest_per_index(entries: Sequence[tuple[int, int, str, T]], tracking_uri: str, parent_run_id: str) -> dict[int, T]:
    """Of ``(index, start_time, run_id, item)`` entries, the item of each index's newest run, by
    index; a second run for an index (a flow killed between creating a run and recording it) is
    named in a warning."""
    newest: dict[int, tuple[int, str, T]] = {}
    for index, start, run_id, item in entries:
        previous = newest.get(index)
        if previous is not None:
            logger.warning(
                "MLflow at %s: trial %d has two runs (%s, %s) under parent %s; keeping the newer",
                tracking_uri, index, previous[1], run_id, parent_run_id,
            )
            if previous[0] > start:
                continue
        newest[index] = (start, run_id, item)
    return {i: newest[i][2] for i in sorted(newest)}


def trial_record(
    run: Any,
    space: SearchSpace | None,
    metric_names: Sequence[str] | None,
    load_artifact: Callable[[str, str], Any],
    tracking_uri: str,
) -> TrialRecord | None:
    """A TrialRecord from a child run; None (with a warning) for a run that cannot be read.

    Params and values come from the JSON tags when the run has them, else from its MLflow params
    (typed by ``space``) and metrics (``metric_names``, else all). ``load_artifact(run_id, path)``
    fetches a params document stored as an artifact.
    """
    tags: dict[str, str] = run.data.tags
    run_id = run.info.run_id
    try:
        index = int(tags[INDEX_TAG])
        raw_params = tags.get(PARAMS_TAG)
        if raw_params is None:
            if space is None:
                raise ParamsNotRecoverableError("no prefect_hpo.params tag, and no search space to read the params with")
            params: dict[str, Any] = params_from_strings(space, run.data.params)
        elif raw_params.startswith(ARTIFACT_MARKER):
            params = load_artifact(run_id, raw_params[len(ARTIFACT_MARKER):])
        else:
            params = json.loads(raw_params)
        raw_values = tags.get(VALUES_TAG)
        status = tags.get(STATUS_TAG)
        if status not in STATUSES:
            status = _FROM_MLFLOW_STATUS.get(run.info.status, "running")
        if raw_values:
            values = json.loads(raw_values)
        elif status in VALUES_IN_METRICS:  # finish_trial_run left them in the metrics
            metrics: dict[str, float] = run.data.metrics
            names = list(metric_names) if metric_names is not None else list(metrics)
            values = {n: from_store(metrics[n]) for n in names if n in metrics} or None
        else:
            values = None
        attempt = int(tags.get(ATTEMPT_TAG, "1"))
    except (KeyError, ValueError) as exc:  # JSONDecodeError and ParamsNotRecoverableError are ValueErrors
        logger.warning("MLflow at %s: skipping trial run %s, its prefect_hpo tags are unreadable (%s)", tracking_uri, run_id, exc)
        return None
    return TrialRecord(
        index=index,
        run_id=run_id,
        params=params,
        suggester=tags.get(SUGGESTER_TAG, ""),
        status=status,
        values={k: float(v) for k, v in values.items()} if isinstance(values, dict) else None,
        failure_reason=tags.get(REASON_TAG) or None,
        attempt=attempt,
    )
