"""Pure optimization: search spaces, the ask/tell experiment, suggesters. No Prefect, no I/O."""

from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.loop import OptimizeResult, optimize
from prefect_hpo.optim.space import ChoiceParameter, FixedParameter, RangeParameter, SearchSpace
from prefect_hpo.optim.suggesters import Suggester, available_suggesters, register_suggester
from prefect_hpo.optim.trials import Trial, TrialStatus

__all__ = [
    "ChoiceParameter",
    "Experiment",
    "FixedParameter",
    "OptimizeResult",
    "RangeParameter",
    "SearchSpace",
    "SpaceEncoder",
    "Suggester",
    "Trial",
    "TrialStatus",
    "available_suggesters",
    "optimize",
    "register_suggester",
]
