"""The suggester interface: a new algorithm is one small class.

Like Optuna's samplers, a suggester sees an immutable snapshot of the experiment (completed points
and their objective values, in-flight points, failed points) in the numeric model space of
:mod:`prefect_hpo.optim.encoding`, and returns new points. It never sees storage, Prefect or the
launcher, and it owns no random state of its own: the experiment hands it a generator derived
from ``(seed, ask number)``, which is what makes a restored experiment suggest exactly what the
saved one would have. A suggester that keeps state between calls (warm-started GP
hyperparameters, a Sobol position) exposes it through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict

from prefect_hpo.errors import SearchSpaceError
from prefect_hpo.optim.encoding import SpaceEncoder

__all__ = ["Count", "Observations", "Suggester", "SuggesterOptions", "Suggestion", "sample_feasible"]

#: Option types for :class:`SuggesterOptions`: strict, so YAML's ``true`` is not read as 1.
Count = Annotated[int, Strict(), Field(ge=1)]
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
StrictBool = Annotated[bool, Strict()]


class SuggesterOptions(BaseModel):
    """The ``algorithm_options`` an algorithm takes: names, types and ranges in one place.

    Each suggester declares a subclass as its ``Options`` next to its class, so a spec is checked
    before anything runs (an unknown name is refused with the valid ones listed, a bad value with
    its name) instead of failing deep inside a constructor. Only the options a user gave reach the
    constructor, so the defaults stay in its signature. Ranges a constructor already checks with
    its own message (``grid``'s resolution, the bandit's ``max_arms``) are left to it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class Observations:
    """What a suggester may know about the experiment, as read-only arrays.

    ``Y`` is oriented so that larger is better for every objective (minimized objectives are
    negated), so no suggester has to care about directions.

    Outcome constraints arrive as ``C``, one column per constraint in the order of
    ``outcome_constraints``, oriented as BoTorch's constraint callables are: a trial satisfies
    constraint ``j`` when ``C[i, j] <= 0`` (``value - bound`` for ``<=``, ``bound - value`` for
    ``>=``, in the metric's units). Suggesters that do not model outcomes may ignore them.

    With several objectives, ``objective_thresholds`` (NaN where the user gave none) and
    ``reference_point`` are in the same larger-is-better orientation as ``Y``. The reference
    point is the experiment's own (:attr:`~prefect_hpo.optim.experiment.Experiment.reference_point`),
    so the hypervolume a suggester improves is the one the user reads; it is None when it cannot
    be inferred yet (no feasible completed trial and not every objective has a threshold).
    """

    encoder: SpaceEncoder
    X: np.ndarray  # (n_completed, d)
    Y: np.ndarray  # (n_completed, n_objectives), larger is better
    X_pending: np.ndarray  # (n_in_flight, d): pending and running trials
    X_failed: np.ndarray  # (n_failed, d): failed and abandoned trials
    n_trials: int  # every trial created so far, whatever its status
    objectives: tuple[str, ...]
    C: np.ndarray | None = None  # (n_completed, n_constraints), feasible <=> every entry <= 0
    outcome_constraints: tuple[str, ...] = ()
    objective_thresholds: np.ndarray | None = None  # (n_objectives,), larger is better, NaN = none
    reference_point: np.ndarray | None = None  # (n_objectives,), larger is better

    def __post_init__(self) -> None:
        # defaults that depend on the other fields, so suggesters never test for None
        if self.C is None:
            object.__setattr__(self, "C", np.zeros((len(self.X), len(self.outcome_constraints))))
        if self.objective_thresholds is None:
            object.__setattr__(self, "objective_thresholds", np.full(self.Y.shape[1], np.nan))
        for arr in (self.X, self.Y, self.X_pending, self.X_failed, self.C, self.objective_thresholds, self.reference_point):
            if arr is not None:
                arr.setflags(write=False)

    @property
    def X_seen(self) -> np.ndarray:
        """Every point already handed out (completed, in flight or failed)."""
        return np.concatenate([self.X, self.X_pending, self.X_failed], axis=0)

    @property
    def feasible(self) -> np.ndarray:
        """(n_completed,) mask of the completed points that satisfy every outcome constraint."""
        assert self.C is not None
        return (self.C <= 0).all(axis=1)


@dataclass(frozen=True)
class Suggestion:
    """A model-space point and the name of the algorithm that actually produced it.

    ``params`` is for algorithms that pick from given configurations (the bandit's candidate
    list): the exact values to use, since decoding ``x`` may change a log-scaled float in its
    last bit (``1e-3`` would run as ``0.0010000000000000002``).
    """

    x: np.ndarray
    suggester: str
    params: dict[str, Any] | None = None


class Suggester(ABC):
    """Base class of every algorithm; subclasses set ``name`` and implement ``suggest``."""

    name: ClassVar[str]
    #: Whether the algorithm can work with several objectives (model-free ones ignore values).
    multi_objective: ClassVar[bool] = True
    #: Whether the algorithm can honour outcome constraints (model-free ones ignore values).
    outcome_constraints: ClassVar[bool] = True
    #: The options it takes (see :class:`SuggesterOptions`); a plugin without one is checked
    #: against its ``__init__`` keyword arguments instead.
    Options: ClassVar[type[SuggesterOptions] | None] = None

    def __init__(self, encoder: SpaceEncoder, *, seed: int) -> None:
        self.encoder = encoder
        self.seed = seed

    @abstractmethod
    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        """Return ``n`` new points that are valid in the model space and satisfy the constraints."""

    @property
    def step_name(self) -> str:
        """What the flow calls the task that runs this algorithm (``suggest_trials``), so a
        different kind of decision shows up as its own step in the Prefect UI (the bandit's
        ``allocate_arms``) without the flow having to know which algorithm it holds."""
        return "suggest_trials"

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state that must survive a checkpoint (empty for stateless algorithms)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def _label(self, X: np.ndarray) -> list[Suggestion]:
        return [Suggestion(x=row, suggester=self.name) for row in X]


def sample_feasible(
    encoder: SpaceEncoder,
    draw_uniform: Callable[[int], np.ndarray],
    n: int,
    max_draws: int = 100_000,
) -> np.ndarray:
    """Draw from ``[0,1)^d``, map into the space and keep points that satisfy the constraints.

    Rejection sampling keeps the distribution uniform on the feasible region; if the region is so
    small that ``max_draws`` points give fewer than ``n`` hits the constraints are almost
    certainly contradictory, which is worth an error rather than an endless loop.
    """
    kept: list[np.ndarray] = []
    found, drawn = 0, 0
    batch = max(n, 16)
    while found < n:
        if drawn >= max_draws:
            exprs = [c.expression for c in encoder.space.constraints]
            raise SearchSpaceError(
                f"constraints {exprs}: only {found} of {drawn} sampled points were feasible; "
                "check that the constraints can be satisfied inside the bounds"
            )
        X = encoder.from_uniform(draw_uniform(batch))
        drawn += batch
        X = X[encoder.feasible(X)]
        kept.append(X)
        found += len(X)
        batch = min(batch * 2, 4096)
    return np.concatenate(kept, axis=0)[:n]
