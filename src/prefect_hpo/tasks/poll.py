"""Polling: collect what running trials reported and which ones ended.

Not a Prefect task: the loop polls every ``poll_interval_s`` and most polls find nothing, so a
task run per poll was most of a flow run's graph (37 of 123 task runs for 6 trials). What a poll
finds that matters, a trial that ended, goes to the ``report_trials`` task; intermediate reports
join the trial's history and its MLflow run here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import logging

from prefect_hpo.errors import StorageError
from prefect_hpo.launchers.base import TrialState
from prefect_hpo.storage.state import json_safe_metrics
from prefect_hpo.tasks.runtime import HPORuntime
from prefect_hpo.trial import Report
from prefect_hpo.storage.trial_run import run_of

__all__ = ["TrialUpdate", "poll_trials"]

logger = logging.getLogger(__name__)


@dataclass
class TrialUpdate:
    """News about one trial since the previous poll."""

    index: int
    state: TrialState
    reports: list[Report] = field(default_factory=list)
    reason: str | None = None
    exit_code: int | None = None
    tracked: bool = False  # the reports are in MLflow already

    @property
    def ended(self) -> bool:
        return self.state is not TrialState.RUNNING


def poll_trials(runtime: HPORuntime, indices: list[int]) -> list[TrialUpdate]:
    """Poll each launched trial once (non-blocking); new reports join the trial's history and
    are logged to its MLflow run (queued: an MLflow outage does not hold the loop).

    Histories are kept in the trial's record (:class:`~prefect_hpo.storage.trial_run.TrialRun`) so they are checkpointed with it: the stopping
    policies need whole learning curves, also after a resume.
    """
    updates = []
    for index in indices:
        trial = runtime.experiment.trial(index)
        run = run_of(trial)
        handle = run.handle
        if handle is None:
            continue
        result = runtime.launcher.poll(handle)
        # after a re-attach the launcher replays the whole log; the checkpoint has the first part
        reports = list(result.reports)[run.take_replayed():]
        if reports:
            run.history.extend(
                {"step": r.step, "metrics": json_safe_metrics(r.metrics)} for r in reports
            )
        run_id = run.run_id
        if reports and run_id and not result.tracked:
            try:
                runtime.tracker.log_reports(run_id, reports)
            except StorageError as exc:
                logger.warning("trial %d: metrics not logged to MLflow: %s", index, exc)
        if reports or result.state is not TrialState.RUNNING:
            updates.append(TrialUpdate(index, result.state, reports, result.reason, result.exit_code, result.tracked))
    return updates
