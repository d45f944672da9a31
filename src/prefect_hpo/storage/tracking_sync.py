"""Make MLflow match the checkpoint: one child run per trial, with its status, tags and metrics.

The checkpoint is the truth and MLflow a view of it. Writes lost or late while MLflow was down
(a trial left RUNNING forever, a trial with no run, a metric never logged, the parent left
open) are repaired here, from the checkpoint alone: at the end of a flow and when an
experiment is resumed. The comparison costs one search of the parent's trial runs; only trials
that differ cost more calls, so a consistent experiment is checked cheaply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, RunStatus, RunTag

from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.storage.mlflow_values import clean_name, compact_json, from_store, now_ms, same_value, truncate
from prefect_hpo.storage.state import metrics_from_json
from prefect_hpo.storage.trial_run import run_of
from prefect_hpo.storage.tracking import (
    _MAX_TAG_VALUE,
    _TERMINAL,
    VALUES_IN_METRICS,
    ATTEMPT_TAG,
    FEASIBLE_TAG,
    REASON_TAG,
    STATUS_TAG,
    STOPPED_BY_TAG,
    VALUES_TAG,
    MlflowTracker,
    metrics_hold_values,
)

__all__ = ["TrialView", "reconcile", "trial_views"]

logger = logging.getLogger(__name__)

_IN_FLIGHT = {"pending", "running"}


@dataclass(frozen=True)
class TrialView:
    """What the checkpoint says about one trial, frozen for the writer thread to compare."""

    index: int
    run_id: str | None
    params: dict[str, Any]
    suggester: str
    status: str
    values: dict[str, float] | None
    failure_reason: str | None
    attempt: int  # 0: never launched, so it has no run
    stopped_by: str | None
    feasible: bool | None
    history: tuple[tuple[int | None, dict[str, float]], ...]


def trial_views(experiment: Experiment) -> list[TrialView]:
    """A copy of every trial's tracked state, taken on the flow's thread."""
    views = []
    for t in experiment.trials:
        run = run_of(t)
        history = tuple((r.get("step"), metrics_from_json(r["metrics"])) for r in run.history)
        views.append(
            TrialView(
                index=t.index, run_id=run.run_id, params=dict(t.params), suggester=t.suggester,
                status=t.status.value, values=None if t.values is None else dict(t.values),
                failure_reason=t.failure_reason, attempt=run.attempt,
                stopped_by=run.stopped_by, feasible=t.feasible, history=history,
            )
        )
    return views


def reconcile(
    tracker: MlflowTracker, parent_run_id: str, views: Sequence[TrialView], parent_status: str, *, final: bool
) -> dict[int, str]:
    """Repair MLflow from ``views``; returns trial index -> its one run id.

    ``final`` (the flow's end): every launched trial gets a run. Otherwise (a resume, with
    launches about to race this) an in-flight trial without any run id is left to its launch.
    Duplicate runs of one index (a create that reached MLflow after the client gave up on it)
    are deleted, keeping the one the checkpoint names, else the newest.
    """
    client = tracker.client
    by_index: dict[int, list[Any]] = {}
    for run in tracker.trial_runs(parent_run_id):
        try:
            by_index.setdefault(int(run.data.tags.get("prefect_hpo.trial_index", "")), []).append(run)
        except ValueError:
            continue
    run_ids: dict[int, str] = {}
    repaired = 0
    for view in views:
        runs = by_index.get(view.index, [])
        known = tracker.resolve(view.run_id)
        if not runs and (view.attempt == 0 and not view.run_id or not final and view.run_id is None and view.status in _IN_FLIGHT):
            continue
        run = _pick(runs, known)
        for extra in runs:
            if extra is not run:
                logger.warning("MLflow at %s: trial %d has a duplicate run %s; deleting it (keeping %s)",
                               tracker.tracking_uri, view.index, extra.info.run_id, run.info.run_id)
                client.delete_run(extra.info.run_id)
        if run is None:
            run_id = tracker.create_trial_run(parent_run_id, view.index, view.params, view.suggester, attempt=max(1, view.attempt))
            run = client.get_run(run_id)
            repaired += 1
        repaired += _repair_run(tracker, run, view)
        run_ids[view.index] = run.info.run_id
        tracker.adopt_run(view.index, run.info.run_id)
    parent = client.get_run(parent_run_id)
    if parent.info.status != parent_status:
        repaired += 1
        if parent_status == "RUNNING":
            client.update_run(parent_run_id, status="RUNNING")
        else:
            client.set_terminated(parent_run_id, status=parent_status)
    if repaired:
        logger.warning("MLflow at %s: %d difference(s) from the checkpoint repaired (parent run %s)",
                       tracker.tracking_uri, repaired, parent_run_id)
    return run_ids


def _pick(runs: list[Any], known: str | None) -> Any | None:
    for run in runs:
        if run.info.run_id == known:
            return run
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def _expected_tags(view: TrialView) -> dict[str, str]:
    """The tags the run must have; a terminal trial without a reason must have no reason tag
    (see :func:`_stale_tags`), and the values tag only where the metrics do not hold the values."""
    tags = {STATUS_TAG: view.status, ATTEMPT_TAG: str(max(1, view.attempt))}
    if view.status not in _IN_FLIGHT and view.failure_reason:  # a running retry keeps the reason before it
        tags[REASON_TAG] = truncate(view.failure_reason, _MAX_TAG_VALUE)
    in_metrics = view.status in VALUES_IN_METRICS and view.attempt <= 1
    if view.values is not None and not (in_metrics and metrics_hold_values(view.values, _latest(_expected_points(view)))):
        tags[VALUES_TAG] = truncate(compact_json(view.values), _MAX_TAG_VALUE)
    if view.stopped_by:
        tags[STOPPED_BY_TAG] = truncate(view.stopped_by, _MAX_TAG_VALUE)
    if view.feasible is not None:
        tags[FEASIBLE_TAG] = str(view.feasible).lower()
    return tags


def _stale_tags(view: TrialView, have: Mapping[str, str]) -> list[str]:
    """Tags the run has and must not: the failure reason of a trial that ended without one."""
    if view.status not in _IN_FLIGHT and not view.failure_reason and REASON_TAG in have:
        return [REASON_TAG]
    return []


def _latest(points: Mapping[str, list[tuple[int, float]]]) -> dict[str, tuple[int, float, bool]]:
    """Per metric, the point MLflow calls its latest (largest step; ambiguous with two values there)."""
    top: dict[str, tuple[int, float, bool]] = {}
    for key, series in points.items():
        for step, value in series:
            have = top.get(key)
            if have is None or step > have[0]:
                top[key] = (step, value, False)
            elif step == have[0] and not same_value(have[1], value):
                top[key] = (step, value, True)
    return top


def _same_tag(key: str, have: str | None, want: str) -> bool:
    if have == want:
        return True
    if key == VALUES_TAG and have:
        try:
            a, b = json.loads(have), json.loads(want)
        except ValueError:
            return False
        return isinstance(a, dict) and a.keys() == b.keys() and all(same_value(float(a[k]), float(b[k])) for k in a)
    return False


def _expected_points(view: TrialView) -> dict[str, list[tuple[int, float]]]:
    """The metric history the tracker logs for this checkpoint: reports (a missing step goes one
    past the largest), then final values that differ from the last report, one step further."""
    points: dict[str, list[tuple[int, float]]] = {}
    step_max = -1
    last: dict[str, float] = {}
    for step, metrics in view.history:
        step = step_max + 1 if step is None else int(step)
        step_max = max(step_max, step)
        for name, value in metrics.items():
            key = clean_name(name)
            points.setdefault(key, []).append((step, float(value)))
            last[key] = float(value)
    for name, value in (view.values or {}).items():
        key = clean_name(name)
        if key not in last or not same_value(last[key], float(value)):
            points.setdefault(key, []).append((step_max + 1, float(value)))
    return points


def _repair_run(tracker: MlflowTracker, run: Any, view: TrialView) -> int:
    """Bring one run in line with its view; returns how many things differed."""
    client, run_id = tracker.client, run.info.run_id
    fixes = 0
    tags = [RunTag(k, v) for k, v in _expected_tags(view).items() if not _same_tag(k, run.data.tags.get(k), v)]
    metrics = list(_missing_metrics(tracker, run, _expected_points(view)))
    if tags or metrics:
        tracker.log_batch_now(run_id, metrics=metrics, tags=tags)
        fixes += len(tags) + len(metrics)
    for key in _stale_tags(view, run.data.tags):
        client.delete_tag(run_id, key)
        fixes += 1
    want = "RUNNING" if view.status in _IN_FLIGHT else RunStatus.to_string(_TERMINAL[view.status])
    if run.info.status != want:
        fixes += 1
        if want == "RUNNING":
            client.update_run(run_id, status=want)
        else:
            client.set_terminated(run_id, status=want)
    return fixes


def _missing_metrics(tracker: MlflowTracker, run: Any, expected: Mapping[str, list[tuple[int, float]]]) -> Iterable[Metric]:
    """Points of ``expected`` not in the run; a metric's history is read only when its latest
    value (which the run carries) differs from the expected one."""
    latest: dict[str, float] = run.data.metrics
    ts = now_ms()
    for key, points in expected.items():
        want_last, top = None, None
        for step, value in points:  # the last point at the largest step, as MLflow picks its latest
            if top is None or step >= top:
                top, want_last = step, value
        have_last = latest.get(key)
        if want_last is None or (have_last is not None and same_value(from_store(have_last), want_last)):
            continue
        have = {(m.step, from_store(m.value)) for m in tracker.client.get_metric_history(run.info.run_id, key)}
        for step, value in points:
            if not any(s == step and same_value(v, value) for s, v in have):
                yield Metric(key, value, ts, step)
