"""prefect-hpo: hyperparameter optimization as Prefect flows, on BoTorch and MLflow.

The optimizer names (``Experiment``, ``optimize``, ...) are loaded on first use (PEP 562):
every trial program imports ``prefect_hpo.trial``, and paying for torch/BoTorch there would add
seconds to every trial that never builds a model.
"""

import os as _os
from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

# Idle OpenMP threads spin by default; beside a running trial that steals the cores the trial
# needs and made GP fitting 20-40x slower here. This must be set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from prefect_hpo.errors import (  # noqa: E402
    NoCompletedTrialsError,
    PrefectHPOError,
    SearchSpaceError,
    SearchSpaceExhaustedError,
    SerializationError,
    SpecError,
    StorageError,
    TrialError,
    UnknownTrialError,
)

if _TYPE_CHECKING:
    from prefect_hpo.optim import (
        Experiment,
        OptimizeResult,
        SearchSpace,
        Suggester,
        Trial,
        TrialStatus,
        available_suggesters,
        optimize,
        register_suggester,
    )

__version__ = "0.1.0"

_LAZY = {
    "Experiment": "prefect_hpo.optim",
    "OptimizeResult": "prefect_hpo.optim",
    "SearchSpace": "prefect_hpo.optim",
    "Suggester": "prefect_hpo.optim",
    "Trial": "prefect_hpo.optim",
    "TrialStatus": "prefect_hpo.optim",
    "available_suggesters": "prefect_hpo.optim",
    "optimize": "prefect_hpo.optim",
    "register_suggester": "prefect_hpo.optim",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_hpo' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Experiment",
    "NoCompletedTrialsError",
    "OptimizeResult",
    "PrefectHPOError",
    "SearchSpace",
    "SearchSpaceError",
    "SearchSpaceExhaustedError",
    "SerializationError",
    "SpecError",
    "StorageError",
    "Suggester",
    "Trial",
    "TrialError",
    "TrialStatus",
    "UnknownTrialError",
    "available_suggesters",
    "optimize",
    "register_suggester",
]
