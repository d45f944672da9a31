"""The ``decide_stop`` task: ask the stopping policy which running trials to stop, and stop them.

It runs after every poll that brought new reports, and only when the spec names a policy (a task
run that could never stop anything would only crowd the flow run's graph). The rules that
confirm a stop are :func:`~prefect_hpo.tasks.attempt_rules.before_kill` and ``after_kill``. The flow's wait returns as soon as a trial's log
grows, so the time from the report that condemns a trial to its SIGTERM is the poll, this task
and the kill: 60-170 ms measured here (``benchmarks/bench_stop_latency.py``), never more than one
poll interval (``trial.poll_interval_s``, 1 s by default) plus that. The kill sends SIGTERM to the
trial's process group and SIGKILL after the launcher's grace period (5 s).
The kill returns once the processes are gone, so the trial's GPUs are free for the very next
launch in the same loop iteration.
"""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.errors import StorageError
from prefect_hpo.launchers.base import PollResult
from prefect_hpo.optim.stopping import MetricHistory, StopDecision, StoppingPolicy
from prefect_hpo.optim.trials import Trial, TrialStatus
from prefect_hpo.storage.state import json_safe_metrics
from prefect_hpo.tasks.attempt_rules import StopCheck, StopOutcome, after_kill, before_kill
from prefect_hpo.tasks.report import close_trial_run
from prefect_hpo.tasks.runtime import HPORuntime, current_runtime, final_values, trial_history
from prefect_hpo.storage.trial_run import run_of

__all__ = ["decide_stop", "learning_curves"]

logger = logging.getLogger(__name__)

#: Trials whose curves the policy sees; failed ones are left out (a crash says nothing about
#: how good the configuration is, and a diverged curve already failed the trial).
_EVIDENCE = (TrialStatus.RUNNING, TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)


def learning_curves(trials: tuple[Trial, ...], metric: str) -> list[MetricHistory]:
    """The watched metric of every running or finished trial, step by step (the last report of a
    step wins; reports without a step are final values, not points of the curve)."""
    histories = []
    for trial in trials:
        if trial.status in _EVIDENCE:
            curve = {step: m[metric] for step, m in trial_history(trial) if step is not None and metric in m}
            histories.append(MetricHistory(trial.index, curve, running=trial.status is TrialStatus.RUNNING))
    return histories


@task(name="decide_stop", cache_policy=NO_CACHE, persist_result=False)
def decide_stop() -> list[StopDecision]:
    """Run the policy on the learning curves, kill the trials it picks, record them early-stopped.

    Returns the decisions that were carried out. A trial that ended on its own between the poll
    and the kill keeps its real outcome; the next poll settles it as usual.
    """
    runtime = current_runtime()
    exp, policy = runtime.experiment, runtime.policy
    metric, minimize = runtime.spec.stopping_metric
    decisions = policy.decide(learning_curves(exp.trials, metric), minimize=minimize)
    runtime.state.stopping = {"policy": policy.describe(), "state": policy.state_dict()}
    carried_out = []
    for decision in decisions:
        trial = exp.trial(decision.index)
        handle = run_of(trial).handle
        if trial.status is not TrialStatus.RUNNING or handle is None:
            continue
        # The decision rests on the reports of the last poll; a trial that has since finished,
        # or trained through the policy's whole budget, is left to end as completed (on a busy
        # machine a fast trial can run several rungs ahead of the flow).
        latest = runtime.launcher.poll(handle)
        _absorb(runtime, trial, latest)
        check = before_kill(latest.state, _trained_full_budget(trial, policy))
        if check is StopCheck.ENDED:
            logger.info("trial %d ended on its own before the %s policy stopped it", trial.index, policy.name)
            continue
        if check is StopCheck.FINISH:
            logger.info("trial %d reached max_steps=%d before the %s policy stopped it; it finishes",
                        trial.index, policy.max_steps, policy.name)
            continue
        reason = f"{policy.name} on {metric}: {decision.reason}"
        runtime.launcher.kill(handle, reason=reason)
        result = runtime.launcher.poll(handle)  # what it reported between the poll and the kill
        _absorb(runtime, trial, result)
        values, missing = final_values(trial, exp.metric_names)
        outcome = after_kill(state=result.state, reason=result.reason, kill_reason=reason,
                             trained_full_budget=_trained_full_budget(trial, policy), missing=missing)
        if outcome is StopOutcome.ENDED_ON_ITS_OWN:
            logger.info("trial %d ended on its own before the %s policy stopped it", trial.index, policy.name)
            continue
        run_of(trial).handle = None
        if outcome is StopOutcome.COMPLETED:
            exp.tell(trial.index, values)
            close_trial_run(runtime, trial.index)
            logger.info("trial %d had trained its whole budget when the %s policy stopped it; recorded as completed",
                        trial.index, policy.name)
            continue
        run_of(trial).stopped_by = policy.describe()
        complete = all(name in values for name in exp.objectives)  # constrained metrics may be missing
        exp.stop_early(trial.index, values if complete else None, reason)
        logger.info("trial %d stopped early: %s", trial.index, reason)
        carried_out.append(StopDecision(trial.index, reason))
    return carried_out


def _trained_full_budget(trial: Trial, policy: StoppingPolicy) -> bool:
    steps = [step for step, _ in trial_history(trial) if step is not None]
    return policy.max_steps is not None and bool(steps) and max(steps) >= policy.max_steps


def _absorb(runtime: HPORuntime, trial: Trial, result: PollResult) -> None:
    reports = result.reports
    if not reports:
        return
    run_of(trial).history.extend(
        {"step": r.step, "metrics": json_safe_metrics(r.metrics)} for r in reports
    )
    run_id = run_of(trial).run_id
    if run_id and not result.tracked:
        try:
            runtime.tracker.log_reports(run_id, reports)
        except StorageError as exc:
            logger.warning("trial %d: metrics not logged to MLflow: %s", trial.index, exc)
