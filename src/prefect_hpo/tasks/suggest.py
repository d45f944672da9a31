"""The ``suggest_trials`` task: ask the optimizer for the next parameters.

The task takes the name the algorithm gives its step (``Suggester.step_name``): a bandit's
Thompson-sampling allocation appears in the Prefect UI as ``allocate_arms``, a search algorithm's
suggestion as ``suggest_trials``.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.tasks.checkpoint import write_checkpoint
from prefect_hpo.tasks.runtime import HPORuntime, current_runtime, trial_names
from prefect_hpo.storage.trial_run import run_of

__all__ = ["run_suggest_step", "suggest_trials"]


@task(name="suggest_trials", cache_policy=NO_CACHE, persist_result=False)
def suggest_trials(n: int) -> list[int]:
    """New pending trials, written to the checkpoint before this task returns.

    Recording a suggestion before its process exists is what lets a flow killed in between
    launch the very same parameters on resume instead of asking again.
    """
    runtime = current_runtime()
    trials = runtime.experiment.ask(n)
    for trial in trials:
        run_of(trial).reset()
    write_checkpoint(runtime)
    return [t.index for t in trials]


def run_suggest_step(runtime: HPORuntime, n: int) -> list[int]:
    """Run :func:`suggest_trials` as a task named after the algorithm's step and the trials it
    will create (``suggest-0004-0005``; a bandit's ``allocate_arms-0004``)."""
    first = len(runtime.experiment.trials)
    label = trial_names(range(first, first + n))
    name = runtime.experiment.suggester.step_name
    prefix = "suggest" if name == suggest_trials.name else name
    step = suggest_trials.with_options(name=name, task_run_name=f"{prefix}-{label}")
    return step(n)
