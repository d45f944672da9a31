"""The stopping-policy interface: given learning curves, say which running trials to stop and why.

A policy is one small class, like an Optuna pruner: it sees only metric histories (never
processes, storage or Prefect) and returns a decision with a reason per trial it wants stopped.
The flow runs it as the ``decide_stop`` task after every poll and does the killing.

Conventions every policy follows, so they can be swapped freely:

- Steps are the integers a trial passes to ``report(step=...)`` (epochs, iterations...). A
  history may skip steps; a policy never assumes consecutive ones.
- ``minimize`` says which way the watched metric is better. NaN or infinite values are a
  diverged curve: they are never "better" than anything.
- Only running trials are stopped; finished ones (completed or stopped earlier) are evidence.
- A policy that must remember past judgments (ASHA records who reached each rung first) keeps
  them in ``state_dict()``, which the flow checkpoints, so a resumed flow judges the same way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from prefect_hpo.errors import SpecError

__all__ = [
    "MetricHistory",
    "NoStopping",
    "StopDecision",
    "StoppingPolicy",
    "check_int",
    "check_number",
    "is_better",
    "latest_step",
]


@dataclass(frozen=True)
class MetricHistory:
    """The learning curve of one trial: ``values[step]`` of the watched metric, and whether it still runs."""

    index: int
    values: Mapping[int, float]
    running: bool

    @property
    def last_step(self) -> int | None:
        return latest_step(self.values)

    def value_at_or_after(self, step: int) -> tuple[int, float] | None:
        """The first reported ``(step, value)`` at or after ``step`` (None if it never got there)."""
        later = [s for s in self.values if s >= step]
        if not later:
            return None
        first = min(later)
        return first, self.values[first]


@dataclass(frozen=True)
class StopDecision:
    """Stop trial ``index``; ``reason`` is shown by ``prefect-hpo status`` and kept in MLflow."""

    index: int
    reason: str


class StoppingPolicy(ABC):
    """Decides which running trials to stop early; a new rule is one subclass of this."""

    #: The registered name, as written in a spec's ``stopping.policy``.
    name: ClassVar[str] = "base"

    #: The longest a trial runs (in steps), handed to the trial as its resource parameter; None
    #: when the policy does not cap training (the trial decides how long it runs).
    max_steps: int | None = None

    @abstractmethod
    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        """The running trials to stop now, each with a reason a user can read."""

    def resource_for(self, index: int) -> int | None:
        """How many steps trial ``index`` may train (its resource parameter); None: no cap.

        Policies that stop trials at rungs give every trial the full ``max_steps``: stopping
        early is the policy's decision, not the trial's.
        """
        return self.max_steps

    def describe(self) -> str:
        """One line with the policy and its settings, for logs, MLflow and ``status``."""
        return self.name

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready memory that must survive a checkpoint (empty for stateless rules)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class NoStopping(StoppingPolicy):
    """Every trial runs to the end (the default)."""

    name = "none"

    def __init__(self, *, max_steps: int | None = None) -> None:
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, minimum=1)

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        return []


# ---- helpers shared by the policies ----------------------------------------------------------


def latest_step(values: Mapping[int, float]) -> int | None:
    return max(values) if values else None


def is_better(a: float, b: float, minimize: bool) -> bool:
    """Strictly better; a NaN is never better, and anything finite beats a NaN."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if minimize else a > b


def check_int(field: str, value: Any, *, minimum: int) -> int:
    """Validate a policy setting, naming it as the spec does (``stopping.<field>``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"stopping.{field}: must be an int >= {minimum}, got {value!r}")
    return value


def check_number(field: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"stopping.{field}: must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SpecError(f"stopping.{field}: must be between {low} and {high}, got {value!r}")
    return float(value)
