"""The ``report_trials`` task: hand finished trials to the optimizer and mirror everything to MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.errors import StorageError
from prefect_hpo.launchers.base import TrialState
from prefect_hpo.tasks.poll import TrialUpdate
from prefect_hpo.tasks.runtime import HPORuntime, final_values

__all__ = ["Outcome", "close_trial_run", "report_trials"]

logger = logging.getLogger(__name__)

MAX_RERUNS = 3  # re-runs after a vanished process; beyond this the trial itself is the suspect


@dataclass(frozen=True)
class Outcome:
    """What reporting decided for one ended attempt: the trial is done, or it is to be re-run."""

    index: int
    status: str  # a TrialStatus value, or "retry"
    reason: str | None = None


@task(name="report_trials", cache_policy=NO_CACHE, persist_result=False)
def report_trials(runtime: HPORuntime, updates: list[TrialUpdate]) -> list[Outcome]:
    """Log new metrics, then settle every attempt that ended.

    An attempt that crashed, timed out or never reported an objective is re-run with the same
    parameters while retries remain (``trial.retries``); a NaN objective is a result, not a
    flake, so it fails the trial at once.
    """
    exp, tracker = runtime.experiment, runtime.tracker
    outcomes: list[Outcome] = []
    for update in updates:
        trial = exp.trial(update.index)
        run_id = trial.metadata.get("run_id")
        if update.reports and run_id and not update.tracked:
            try:
                tracker.log_reports(run_id, update.reports)
            except StorageError as exc:
                logger.warning("trial %d: metrics not logged to MLflow: %s", update.index, exc)
        if update.state is TrialState.RUNNING or trial.status.is_terminal:
            continue
        attempt = int(trial.metadata.get("attempt", 1))
        failure = update.reason or "failed"
        values: dict[str, float] = {}
        if update.state is TrialState.SUCCEEDED:
            values, missing = final_values(trial, exp.metric_names)
            failure = f"exited 0 without reporting {', '.join(repr(m) for m in missing)}" if missing else ""
        trial.metadata["handle"] = None
        if failure:
            trial.metadata["attempts"] = [*trial.metadata.get("attempts", []), {"attempt": attempt, "reason": failure}]
            reruns = int(trial.metadata.get("reruns", 0))
            vanished = update.exit_code is None and "vanished" in failure
            if vanished and reruns < MAX_RERUNS:  # the machine or the driver died, not the trial
                trial.metadata["reruns"] = reruns + 1
                logger.warning("trial %d attempt %d: %s; re-running it (not counted as a retry)", update.index, attempt, failure)
                _mark(runtime, run_id, update.index, attempt, failure)
                outcomes.append(Outcome(update.index, "retry", failure))
                continue
            if attempt - reruns <= runtime.spec.trial.retries:
                logger.warning("trial %d attempt %d failed (%s); re-running it", update.index, attempt, failure)
                _mark(runtime, run_id, update.index, attempt, failure)
                outcomes.append(Outcome(update.index, "retry", failure))
                continue
            exp.tell(update.index, failed=failure)
        else:
            exp.tell(update.index, values)  # a NaN or inf value marks it failed here
        close_trial_run(runtime, update.index)
        outcomes.append(Outcome(update.index, exp.trial(update.index).status.value, exp.trial(update.index).failure_reason))
    return outcomes


def close_trial_run(runtime: HPORuntime, index: int) -> None:
    """Finish a trial's MLflow run with its status, reason and the last attempt's log."""
    trial = runtime.experiment.trial(index)
    run_id = trial.metadata.get("run_id")
    if not run_id:
        return
    attempt = int(trial.metadata.get("attempt", 1))
    log = runtime.attempt_dir(index, attempt) / "output.log"
    try:
        runtime.tracker.finish_trial_run(
            run_id,
            status=trial.status.value,
            values=trial.values,
            failure_reason=trial.failure_reason,
            log_file=log if log.exists() else None,
            attempt=attempt,
            stopped_by=trial.metadata.get("stopped_by"),
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


