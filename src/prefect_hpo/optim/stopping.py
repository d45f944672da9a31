"""Stopping policies: given the metric histories of the trials, say which running ones to stop.

A policy is one small class, like an Optuna pruner: it sees only metric histories (never
processes, storage or Prefect) and returns a decision with a reason per trial it wants stopped.
The flow runs it as the ``decide_stop`` task after every poll and does the killing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MetricHistory", "NoStopping", "StopDecision", "StoppingPolicy"]


@dataclass(frozen=True)
class MetricHistory:
    """The learning curve of one trial: ``values[step]`` of the watched metric, and whether it still runs."""

    index: int
    values: Mapping[int, float]
    running: bool


@dataclass(frozen=True)
class StopDecision:
    index: int
    reason: str


class StoppingPolicy(ABC):
    """Decides which running trials to stop early."""

    name: str = "base"

    @abstractmethod
    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        """The running trials to stop now, each with a reason a user can read."""


class NoStopping(StoppingPolicy):
    """Every trial runs to the end (the default until a policy is configured)."""

    name = "none"

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        return []
