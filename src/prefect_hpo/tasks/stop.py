"""The ``decide_stop`` task: ask the stopping policy which running trials to stop, and stop them."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.optim.stopping import MetricHistory, StopDecision
from prefect_hpo.optim.trials import TrialStatus
from prefect_hpo.tasks.runtime import HPORuntime, trial_history

__all__ = ["decide_stop"]


@task(name="decide_stop", cache_policy=NO_CACHE, persist_result=False)
def decide_stop(runtime: HPORuntime) -> list[StopDecision]:
    """Run the policy on the learning curves of the watched metric (the first objective).

    The policy only decides; killing the process group here frees the trial's GPUs at once.
    """
    exp = runtime.experiment
    metric, direction = next(iter(exp.objectives.items()))
    histories = []
    for trial in exp.trials:
        if trial.status in (TrialStatus.RUNNING, TrialStatus.COMPLETED):
            curve = {step: m[metric] for step, m in trial_history(trial) if step is not None and metric in m}
            histories.append(MetricHistory(trial.index, curve, running=trial.status is TrialStatus.RUNNING))
    decisions = runtime.policy.decide(histories, minimize=direction == "minimize")
    for decision in decisions:
        trial = exp.trial(decision.index)
        handle = trial.metadata.get("handle")
        if trial.status is not TrialStatus.RUNNING or handle is None:
            continue
        runtime.launcher.kill(handle, reason=decision.reason)
        trial.metadata["handle"] = None
        exp.tell(decision.index, failed=f"stopped by policy {runtime.policy.name!r}: {decision.reason}")
    return decisions
