"""The ``poll_trials`` task: collect what running trials reported and which ones ended."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.launchers.base import TrialState
from prefect_hpo.storage.state import json_safe_metrics
from prefect_hpo.tasks.runtime import HPORuntime
from prefect_hpo.trial import Report

__all__ = ["TrialUpdate", "poll_trials"]


@dataclass
class TrialUpdate:
    """News about one trial since the previous poll."""

    index: int
    state: TrialState
    reports: list[Report] = field(default_factory=list)
    reason: str | None = None
    exit_code: int | None = None
    tracked: bool = False  # the reports are in MLflow already


@task(name="poll_trials", cache_policy=NO_CACHE, persist_result=False)
def poll_trials(runtime: HPORuntime, indices: list[int]) -> list[TrialUpdate]:
    """Poll each launched trial once (non-blocking); new reports join the trial's history.

    Histories are kept in the trial's metadata so they are checkpointed with it: the stopping
    policies need whole learning curves, also after a resume.
    """
    updates = []
    for index in indices:
        trial = runtime.experiment.trial(index)
        handle = trial.metadata.get("handle")
        if handle is None:
            continue
        result = runtime.launcher.poll(handle)
        # after a re-attach the launcher replays the whole log; the checkpoint has the first part
        reports = list(result.reports)[int(trial.metadata.pop("replayed", 0)):]
        if reports:
            trial.metadata.setdefault("history", []).extend(
                {"step": r.step, "metrics": json_safe_metrics(r.metrics)} for r in reports
            )
        if reports or result.state is not TrialState.RUNNING:
            updates.append(TrialUpdate(index, result.state, reports, result.reason, result.exit_code, result.tracked))
    return updates
