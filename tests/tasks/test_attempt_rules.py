"""The rules that settle an ended attempt and confirm a stop, case by case, without a flow."""

from __future__ import annotations

import pytest

from prefect_hpo.launchers.base import TrialState
from prefect_hpo.tasks.attempt_rules import (
    MAX_RERUNS,
    Settle,
    StopCheck,
    StopOutcome,
    after_kill,
    before_kill,
    settle_attempt,
)


def settle(**kw):  # noqa: ANN003, ANN201
    facts = {"succeeded": False, "reason": "exit code 1", "exit_code": 1, "missing": [], "attempt": 1, "reruns": 0, "retries": 1}
    return settle_attempt(**{**facts, **kw})


def test_an_exit_0_with_every_objective_completes() -> None:
    verdict = settle(succeeded=True, reason=None, exit_code=0)
    assert verdict.action is Settle.COMPLETE and verdict.reason == ""


def test_an_exit_0_without_an_objective_is_a_failure_naming_it() -> None:
    verdict = settle(succeeded=True, reason=None, exit_code=0, missing=["val_loss"], retries=0)
    assert verdict.action is Settle.FAIL
    assert verdict.reason == "exited 0 without reporting 'val_loss'"


@pytest.mark.parametrize(("attempt", "retries", "action"), [(1, 0, Settle.FAIL), (1, 1, Settle.RETRY), (2, 1, Settle.FAIL), (2, 2, Settle.RETRY), (3, 2, Settle.FAIL)])
def test_a_crash_is_retried_while_retries_remain(attempt: int, retries: int, action: Settle) -> None:
    assert settle(attempt=attempt, retries=retries).action is action


def test_a_vanished_process_reruns_without_using_a_retry() -> None:
    verdict = settle(reason="the process vanished (no exit status)", exit_code=None, attempt=1, retries=0)
    assert verdict.action is Settle.RERUN
    # after two re-runs the third attempt is still the trial's first own try: it has its retry
    again = settle(reason="exit code 1", attempt=3, reruns=2, retries=1)
    assert again.action is Settle.RETRY


def test_reruns_are_bounded_then_the_trial_is_the_suspect() -> None:
    vanished = {"reason": "the process vanished", "exit_code": None, "retries": 0}
    assert settle(**vanished, attempt=MAX_RERUNS, reruns=MAX_RERUNS - 1).action is Settle.RERUN
    assert settle(**vanished, attempt=MAX_RERUNS + 1, reruns=MAX_RERUNS).action is Settle.FAIL


def test_a_vanished_word_with_an_exit_code_is_an_ordinary_failure() -> None:
    # only a missing exit status says the machine died; the trial's own message cannot
    assert settle(reason="data vanished from the bucket", exit_code=2, retries=0).action is Settle.FAIL


def test_before_the_kill_a_trial_that_ended_or_trained_its_budget_is_left_alone() -> None:
    assert before_kill(TrialState.RUNNING, trained_full_budget=False) is StopCheck.KILL
    assert before_kill(TrialState.SUCCEEDED, trained_full_budget=False) is StopCheck.ENDED
    assert before_kill(TrialState.FAILED, trained_full_budget=True) is StopCheck.ENDED
    assert before_kill(TrialState.RUNNING, trained_full_budget=True) is StopCheck.FINISH


def test_only_a_failure_with_the_kills_reason_is_a_stop() -> None:
    kill = "asha on loss: rung 1"
    stopped = after_kill(state=TrialState.FAILED, reason=f"{kill} (SIGTERM)", kill_reason=kill,
                         trained_full_budget=False, missing=[])
    assert stopped is StopOutcome.EARLY_STOPPED
    own_crash = after_kill(state=TrialState.FAILED, reason="exit code 1", kill_reason=kill, trained_full_budget=False, missing=[])
    assert own_crash is StopOutcome.ENDED_ON_ITS_OWN
    finished = after_kill(state=TrialState.SUCCEEDED, reason=None, kill_reason=kill, trained_full_budget=False, missing=[])
    assert finished is StopOutcome.ENDED_ON_ITS_OWN


def test_a_kill_that_landed_after_the_whole_budget_records_a_completed_trial() -> None:
    kill = "asha on loss: rung 1"
    full = after_kill(state=TrialState.FAILED, reason=kill, kill_reason=kill, trained_full_budget=True, missing=[])
    assert full is StopOutcome.COMPLETED
    # without every objective it cannot be a completed trial: it was stopped
    partial = after_kill(state=TrialState.FAILED, reason=kill, kill_reason=kill, trained_full_budget=True, missing=["acc"])
    assert partial is StopOutcome.EARLY_STOPPED
