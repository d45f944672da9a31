"""The ``suggest_trials`` task: ask the optimizer for the next parameters."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.tasks.runtime import HPORuntime

__all__ = ["suggest_trials"]


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
