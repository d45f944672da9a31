"""The rules that settle an ended attempt and confirm a stop, as pure functions.

They decide what an experiment records, so they are kept apart from the tasks that carry them
out (``report_trials``, ``decide_stop``) and tested on their own, fast, for every case
(``tests/tasks/test_attempt_rules.py``); the tasks only gather the facts and act on the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from prefect_hpo.launchers.base import TrialState

__all__ = [
    "MAX_RERUNS",
    "AttemptVerdict",
    "Settle",
    "StopCheck",
    "StopOutcome",
    "after_kill",
    "before_kill",
    "settle_attempt",
]

MAX_RERUNS = 3  # re-runs after a vanished process; beyond this the trial itself is the suspect


class Settle(str, Enum):
    """What becomes of a trial whose attempt ended."""

    COMPLETE = "complete"  # tell the optimizer its values
    RERUN = "rerun"  # the process vanished (machine or driver died): run again, not counted as a retry
    RETRY = "retry"  # it failed and retries remain: run again with the same parameters
    FAIL = "fail"  # it failed for good


@dataclass(frozen=True)
class AttemptVerdict:
    action: Settle
    reason: str = ""  # why the attempt failed ("" when it completed)


def settle_attempt(
    *,
    succeeded: bool,
    reason: str | None,
    exit_code: int | None,
    missing: Sequence[str],
    attempt: int,
    reruns: int,
    retries: int,
    max_reruns: int = MAX_RERUNS,
) -> AttemptVerdict:
    """Settle one ended attempt of a trial.

    ``succeeded``: the command exited 0; ``missing``: objectives it never reported (an exit 0
    without them is a failure: the optimizer has nothing to learn from). A process that
    *vanished* (no exit status: its machine or the flow that watched it died) is re-run up to
    ``max_reruns`` times without using a retry, because the trial did nothing wrong. Otherwise an
    attempt is retried while ``attempt - reruns <= retries``: ``retries`` counts the trial's own
    failures only. A NaN objective is a result, not a flake: it completes here and the optimizer
    marks it failed, so it is never retried.
    """
    if succeeded:
        if not missing:
            return AttemptVerdict(Settle.COMPLETE)
        failure = f"exited 0 without reporting {', '.join(repr(m) for m in missing)}"
    else:
        failure = reason or "failed"
    vanished = exit_code is None and "vanished" in failure
    if vanished and reruns < max_reruns:
        return AttemptVerdict(Settle.RERUN, failure)
    if attempt - reruns <= retries:
        return AttemptVerdict(Settle.RETRY, failure)
    return AttemptVerdict(Settle.FAIL, failure)


class StopCheck(str, Enum):
    """What to do with a trial a stopping policy picked, seen just before the kill."""

    KILL = "kill"
    ENDED = "ended"  # it ended on its own since the poll the decision rests on: it keeps its outcome
    FINISH = "finish"  # it trained through the policy's whole budget: let it end as completed


def before_kill(state: TrialState, trained_full_budget: bool) -> StopCheck:
    """The decision rests on the last poll's reports; on a busy machine a fast trial can run
    several rungs ahead of the flow, so the trial is polled once more and checked first."""
    if state is not TrialState.RUNNING:
        return StopCheck.ENDED
    if trained_full_budget:
        return StopCheck.FINISH
    return StopCheck.KILL


class StopOutcome(str, Enum):
    """How a killed trial is recorded."""

    ENDED_ON_ITS_OWN = "ended_on_its_own"  # the kill found it finished: the next poll settles it
    COMPLETED = "completed"  # its last epochs were written when the SIGTERM landed
    EARLY_STOPPED = "early_stopped"


def after_kill(
    *, state: TrialState, reason: str | None, kill_reason: str, trained_full_budget: bool, missing: Sequence[str]
) -> StopOutcome:
    """Confirm the kill: only an attempt that failed *with our kill's reason* was stopped by it;
    any other end (an exit, a crash of its own) is the trial's real outcome. A trial that had
    reported every objective through the whole budget when the signal landed is a finished one."""
    if state is not TrialState.FAILED or not (reason or "").startswith(kill_reason):
        return StopOutcome.ENDED_ON_ITS_OWN
    if trained_full_budget and not missing:
        return StopOutcome.COMPLETED
    return StopOutcome.EARLY_STOPPED
