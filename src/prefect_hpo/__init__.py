"""prefect-hpo: hyperparameter optimization as Prefect flows, on BoTorch and MLflow."""

import os as _os

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
from prefect_hpo.optim import (  # noqa: E402
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
