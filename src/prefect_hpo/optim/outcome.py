"""What an experiment found, as plain JSON-ready data: the flow's result, ``prefect-hpo best``,
the status document and the Prefect summary all say the same thing.

One objective: the best feasible completed trial. Several: the Pareto front (every trial no
other beats on all objectives), its hypervolume and the reference point it is measured from.
"""

from __future__ import annotations

from typing import Any

from prefect_hpo.errors import NoCompletedTrialsError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.trials import Trial

__all__ = ["experiment_outcome", "trial_result"]


def trial_result(trial: Trial) -> dict[str, Any]:
    return {"index": trial.index, "params": dict(trial.params), "values": dict(trial.values or {})}


def experiment_outcome(exp: Experiment) -> dict[str, Any] | None:
    """``{"index", "params", "values"}`` of the best trial, or for several objectives
    ``{"pareto_front": [...], "hypervolume", "reference_point", "outside_thresholds": [indices]}``;
    None while nothing qualifies."""
    if not exp.is_multi_objective:
        try:
            return trial_result(exp.best_trial)
        except NoCompletedTrialsError:
            return None
    front = exp.pareto_front()
    if not front:
        return None
    return {
        "pareto_front": [trial_result(t) for t in front],
        "hypervolume": exp.hypervolume(),
        "reference_point": dict(exp.reference_point),
        # completed trials that miss an objective's threshold: shown apart, never on the front
        "outside_thresholds": [t.index for t in exp.outside_thresholds()],
    }
