"""The ``report_trials`` task: hand trials whose attempt ended to the optimizer, and close their MLflow runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.errors import StorageError
from prefect_hpo.launchers.base import TrialState
from prefect_hpo.storage.tracking_sync import reconcile, trial_views
from prefect_hpo.tasks.attempt_rules import Settle, settle_attempt
from prefect_hpo.tasks.checkpoint import write_checkpoint
from prefect_hpo.tasks.dashboard import update_dashboard
from prefect_hpo.tasks.poll import TrialUpdate
from prefect_hpo.tasks.runtime import HPORuntime, current_runtime, final_values
from prefect_hpo.storage.trial_run import run_of

__all__ = ["Outcome", "close_trial_run", "close_tracking", "repair_tracking", "report_trials"]

logger = logging.getLogger(__name__)

#: How long a flow's end waits for MLflow writes still queued (an MLflow outage); what is left
#: is repaired by the next resume, from the checkpoint.
DRAIN_ENV = "PREFECT_HPO_MLFLOW_DRAIN_S"
DEFAULT_DRAIN_S = 30.0


@dataclass(frozen=True)
class Outcome:
    """What reporting decided for one ended attempt: the trial is done, or it is to be re-run."""

    index: int
    status: str  # a TrialStatus value, or "retry"
    reason: str | None = None


@task(name="report_trials", cache_policy=NO_CACHE, persist_result=False)
def report_trials(ended: list[TrialUpdate]) -> list[Outcome]:
    """Settle every attempt that ended (:func:`~prefect_hpo.tasks.attempt_rules.settle_attempt`):
    tell the optimizer, or schedule the attempt again, and close the trial's MLflow run.

    An attempt that crashed, timed out or never reported an objective is re-run with the same
    parameters while retries remain (``trial.retries``); a NaN objective is a result, not a
    flake, so it fails the trial at once. The checkpoint is written here, as the suggest and launch
    tasks write theirs: a result is on record as soon as it is settled.
    """
    runtime = current_runtime()
    exp = runtime.experiment
    outcomes: list[Outcome] = []
    for update in ended:
        trial = exp.trial(update.index)
        if update.state is TrialState.RUNNING or trial.status.is_terminal:
            continue
        run = run_of(trial)
        attempt, reruns = run.attempt or 1, run.reruns
        succeeded = update.state is TrialState.SUCCEEDED
        values, missing = final_values(trial, exp.metric_names) if succeeded else ({}, [])
        verdict = settle_attempt(
            succeeded=succeeded, reason=update.reason, exit_code=update.exit_code, missing=missing,
            attempt=attempt, reruns=reruns, retries=runtime.spec.trial.retries,
        )
        run.handle = None
        if verdict.action is not Settle.COMPLETE:
            run.record_failure(attempt, verdict.reason)
        if verdict.action is Settle.RERUN:
            run.reruns = reruns + 1
            logger.warning("trial %d attempt %d: %s; re-running it (not counted as a retry)", update.index, attempt, verdict.reason)
        if verdict.action in (Settle.RERUN, Settle.RETRY):
            _mark(runtime, run.run_id, update.index, attempt, verdict.reason)
            outcomes.append(Outcome(update.index, "retry", verdict.reason))
            continue
        if verdict.action is Settle.FAIL:
            exp.tell(update.index, failed=verdict.reason)
        else:
            exp.tell(update.index, values)  # a NaN or inf value marks it failed here
        close_trial_run(runtime, update.index)
        outcomes.append(Outcome(update.index, exp.trial(update.index).status.value, exp.trial(update.index).failure_reason))
    if outcomes:  # on record before anything else is done with them (artifacts, the dashboard)
        write_checkpoint(runtime)
    return outcomes


def close_trial_run(runtime: HPORuntime, index: int) -> None:
    """Finish a trial's MLflow run with its status, reason and the last attempt's log."""
    trial = runtime.experiment.trial(index)
    run = run_of(trial)
    run_id = run.run_id
    if not run_id:
        return
    attempt = run.attempt or 1
    log = runtime.attempt_dir(index, attempt) / "output.log"
    try:
        runtime.tracker.finish_trial_run(
            run_id,
            status=trial.status.value,
            values=trial.values,
            failure_reason=trial.failure_reason,
            log_file=log if log.exists() else None,
            attempt=attempt,
            stopped_by=run.stopped_by,
            feasible=trial.feasible,
        )
    except StorageError as exc:
        logger.warning("trial %d: MLflow run not closed: %s", index, exc)


def _mark(runtime: HPORuntime, run_id: str | None, index: int, attempt: int, reason: str) -> None:
    if not run_id:
        return
    try:
        runtime.tracker.mark_trial_status(run_id, "running", attempt=attempt + 1, reason=f"attempt {attempt} failed: {reason}")
    except StorageError as exc:
        logger.warning("trial %d: MLflow status not updated: %s", index, exc)




def repair_tracking(runtime: HPORuntime) -> None:
    """On resume: queue the repair of what an earlier outage left in MLflow (trials RUNNING
    forever, missing runs or metrics). It runs on the writer thread before any new write, so the
    flow starts at once; a trial still in flight with no run at all is left to its launch."""
    parent = runtime.state.parent_run_id
    if parent is None:
        return
    tracker, views = runtime.tracker, trial_views(runtime.experiment)
    try:
        tracker.submit("repair MLflow from the checkpoint", lambda: reconcile(tracker, parent, views, "RUNNING", final=False))
    except StorageError as exc:  # only without the background mode, where it runs here
        logger.warning("%s: MLflow not repaired from the checkpoint: %s", runtime.spec.name, exc)


def close_tracking(runtime: HPORuntime, timeout_s: float | None = None) -> bool:
    """At the flow's end: make MLflow match the checkpoint, waiting at most ``timeout_s``
    (``$PREFECT_HPO_MLFLOW_DRAIN_S``, default 30 s) for queued writes. On success the trials'
    run ids in the checkpoint are the real ones; otherwise a warning says what is left and that
    resuming the experiment repairs it. Returns whether MLflow caught up."""
    if timeout_s is None:
        timeout_s = _drain_timeout()
    tracker, parent, exp = runtime.tracker, runtime.state.parent_run_id, runtime.experiment
    run_ids: dict[int, str] = {}
    if parent is not None:
        views, status = trial_views(exp), tracker.expected_parent_status(parent)
        try:
            tracker.submit("make MLflow match the checkpoint",
                           lambda: run_ids.update(reconcile(tracker, parent, views, status, final=True)))
        except StorageError as exc:
            logger.warning("%s: MLflow does not match the checkpoint: %s", exp.name, exc)
        else:  # the best-trial tag also reaches a run the reconciliation just created
            update_dashboard(runtime, late_ids=run_ids, final=True)
    drained = tracker.close(timeout_s)
    if not drained:
        left = tracker.backlog
        logger.warning(
            "%s: MLflow at %s did not take %d queued write(s) within %.0f s; MLflow lags the checkpoint "
            "until the experiment is resumed (`prefect-hpo resume %s` repairs it)",
            exp.name, tracker.tracking_uri, left, timeout_s, exp.name,
        )
    else:  # the reconciliation ran (it was the last write): the checkpoint gets the real run ids
        for index, run_id in run_ids.items():
            run_of(exp.trial(index)).run_id = run_id
    return drained


def _drain_timeout() -> float:
    """``$PREFECT_HPO_MLFLOW_DRAIN_S``; a bad value must not cost the final checkpoint, so it warns."""
    raw = os.environ.get(DRAIN_ENV)
    if not raw:
        return DEFAULT_DRAIN_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        logger.warning("%s=%r is not a number of seconds >= 0; using %g", DRAIN_ENV, raw, DEFAULT_DRAIN_S)
        return DEFAULT_DRAIN_S
    return value
