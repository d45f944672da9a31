"""The loop API: ``optimize(evaluate, parameters, ...)`` for when the objective is a Python call.

It is a few lines on top of :class:`~prefect_hpo.optim.experiment.Experiment` on purpose: the flow
(and anyone who needs more control) drives the same ask/tell engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from prefect_hpo.errors import SearchSpaceExhaustedError, SpecError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.space import Value

__all__ = ["OptimizeResult", "optimize"]

logger = logging.getLogger(__name__)


class _Found(NamedTuple):
    best_params: dict[str, Value]
    best_values: dict[str, float]
    experiment: Experiment


class OptimizeResult(_Found):
    """What :func:`optimize` found; unpacks as ``best_params, best_values, experiment``.

    ``exhausted`` says the loop ended early because a finite space had no untried point left
    (``exhausted_reason`` says why); the three values are then the best of what was tried. It is
    an attribute rather than a fourth field so that three-name unpacking keeps working.
    """

    exhausted: bool
    exhausted_reason: str | None

    def __new__(
        cls,
        best_params: dict[str, Value],
        best_values: dict[str, float],
        experiment: Experiment,
        exhausted_reason: str | None = None,
    ) -> OptimizeResult:
        self = super().__new__(cls, best_params, best_values, experiment)
        self.exhausted_reason = exhausted_reason
        self.exhausted = exhausted_reason is not None
        return self


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
    does not cost the whole search. A finite space with fewer points than ``trials`` ends the
    loop when every point was tried (a warning and ``result.exhausted`` say so), returning the
    best of them rather than raising: the budget is a ceiling, not a promise.
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
    exhausted: str | None = None
    for _ in range(trials):
        try:
            trial = exp.ask()
        except SearchSpaceExhaustedError as exc:
            exhausted = str(exc)
            logger.warning("%s: stopped after %d of %d trials: %s", name, len(exp.trials), trials, exc)
            break
        try:
            result = evaluate(dict(trial.params))
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a failed trial
            logger.warning("trial %d failed: %s: %s", trial.index, type(exc).__name__, exc)
            exp.tell(trial.index, failed=exc)
            continue
        values = result if isinstance(result, Mapping) else {objective: result}
        exp.tell(trial.index, values)
    best = exp.best_trial
    return OptimizeResult(dict(best.params), dict(best.values or {}), exp, exhausted)
