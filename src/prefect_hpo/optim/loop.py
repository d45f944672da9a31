"""The loop API: ``optimize(evaluate, parameters, ...)`` for when the objective is a Python call.

It is a few lines on top of :class:`~prefect_hpo.optim.experiment.Experiment` on purpose: the flow
(and anyone who needs more control) drives the same ask/tell engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.space import Value

__all__ = ["OptimizeResult", "optimize"]

logger = logging.getLogger(__name__)


class OptimizeResult(NamedTuple):
    """What :func:`optimize` found; unpacks as ``best_params, best_values, experiment``."""

    best_params: dict[str, Value]
    best_values: dict[str, float]
    experiment: Experiment


def optimize(
    evaluate: Callable[[dict[str, Value]], float | Mapping[str, float]],
    parameters: Any,
    objective: str = "objective",
    minimize: bool = True,
    trials: int = 30,
    seed: int | None = None,
    algorithm: str = "auto",
    parameter_constraints: Sequence[str] | None = None,
    algorithm_options: Mapping[str, Any] | None = None,
    name: str = "optimize",
) -> OptimizeResult:
    """Minimize (or maximize) ``evaluate(params)`` over the space in ``trials`` evaluations.

    ``evaluate`` returns a number or ``{objective: number}``. An exception it raises, or a NaN,
    marks that trial failed with the reason and the loop goes on, so one diverged configuration
    does not cost the whole search.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SpecError(f"trials: must be a positive int, got {trials!r}")
    exp = Experiment(
        name=name,
        parameters=parameters,
        objectives={objective: "minimize" if minimize else "maximize"},
        algorithm=algorithm,
        seed=seed,
        parameter_constraints=parameter_constraints,
        algorithm_options=algorithm_options,
    )
    for _ in range(trials):
        trial = exp.ask()
        try:
            result = evaluate(dict(trial.params))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a failed trial
            logger.warning("trial %d failed: %s: %s", trial.index, type(exc).__name__, exc)
            exp.tell(trial.index, failed=exc)
            continue
        values = result if isinstance(result, Mapping) else {objective: result}
        exp.tell(trial.index, values)
    best = exp.best_trial
    return OptimizeResult(best_params=dict(best.params), best_values=dict(best.values or {}), experiment=exp)
