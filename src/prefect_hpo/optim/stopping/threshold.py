"""Threshold stopping: stop a trial as soon as its latest report is worse than a fixed bound.

Useful when the user knows what "hopeless" looks like (a loss that is still above 2.0 after the
warm-up, an accuracy at chance level) and wants those runs gone without waiting for enough
other trials to compare against. It judges the *latest* value, not the best so far: a run that
was once good and has since blown up is exactly what a bound is for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping.base import MetricHistory, StopDecision, StoppingPolicy, check_int, check_number

__all__ = ["ThresholdPolicy"]


class ThresholdPolicy(StoppingPolicy):
    """Stop a running trial whose latest value (after the warm-up) is strictly worse than ``threshold``.

    A NaN or infinite latest value counts as worse: a diverged curve is never within bounds,
    even an infinitely "good" one, which is a numerical blow-up rather than a result.
    """

    name = "threshold"

    def __init__(
        self,
        *,
        threshold: float | None = None,
        min_steps: int = 1,
        max_steps: int | None = None,
    ) -> None:
        # ``threshold`` has no sensible default, but it is a keyword with one so that a missing
        # value gets a spec-style error naming the field instead of a bare TypeError.
        if threshold is None:
            raise SpecError("stopping.threshold: required by policy 'threshold' (the bound a trial must stay within)")
        self.threshold = check_number("threshold", threshold)
        self.min_steps = check_int("min_steps", min_steps, minimum=1)
        # A cap below the warm-up would make the policy silently never act.
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, minimum=self.min_steps)

    def describe(self) -> str:
        return f"{self.name}(threshold={self.threshold:g}, min_steps={self.min_steps}, max_steps={self.max_steps})"

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        decisions: dict[int, StopDecision] = {}
        for history in histories:
            step = history.last_step
            if not history.running or step is None or step < self.min_steps:
                continue
            value = _as_float(history.values[step])
            if not math.isfinite(value):
                decisions[history.index] = StopDecision(
                    history.index, f"latest value {value} at step {step} is not finite (diverged)"
                )
            elif (value > self.threshold) if minimize else (value < self.threshold):
                bound = "<=" if minimize else ">="
                decisions[history.index] = StopDecision(
                    history.index,
                    f"latest value {value:.4g} at step {step} is worse than the threshold "
                    f"{self.threshold:g} (must be {bound} {self.threshold:g})",
                )
        return [decisions[i] for i in sorted(decisions)]


def _as_float(value: object) -> float:
    """A reported value as a float; anything unreadable counts as a diverged (NaN) report."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
