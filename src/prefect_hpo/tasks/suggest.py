"""The ``suggest_trials`` task: ask the optimizer for the next parameters.

The task takes the name the algorithm gives its step (``Suggester.step_name``): a bandit's
Thompson-sampling allocation appears in the Prefect UI as ``allocate_arms``, a search algorithm's
suggestion as ``suggest_trials``.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.tasks.runtime import HPORuntime

__all__ = ["run_suggest_step", "suggest_trials"]


@task(name="suggest_trials", task_run_name="suggest-{n}", cache_policy=NO_CACHE, persist_result=False)
def suggest_trials(runtime: HPORuntime, n: int) -> list[int]:
    """New pending trials; they are checkpointed before anything launches them.

    Recording a suggestion before its process exists is what lets a flow killed in between
    launch the very same parameters on resume instead of asking again.
    """
    trials = runtime.experiment.ask(n)
    for trial in trials:
        trial.metadata.update({"attempt": 0, "handle": None, "history": [], "attempts": []})
    return [t.index for t in trials]


def run_suggest_step(runtime: HPORuntime, n: int) -> list[int]:
    """Run :func:`suggest_trials` as a task named after the algorithm's step."""
    name = runtime.experiment.suggester.step_name
    step = suggest_trials if name == suggest_trials.name else suggest_trials.with_options(name=name, task_run_name=f"{name}-{n}")
    return step(runtime, n)
