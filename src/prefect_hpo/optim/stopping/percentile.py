"""Percentile (and median) stopping: stop a trial whose best so far trails what others had reached.

This is the median stopping rule of Google Vizier (Golovin et al., 2017), as in Optuna's
``MedianPruner``/``PercentilePruner``: a trial is compared with the *running averages* of the
other trials at the same step, not their values at that step, so one lucky or noisy report by
another trial cannot kill a good run, and a trial is judged by its *best* value so far, so a
temporary bump in its own curve does not kill it either. Both choices make the rule lenient;
its strength is that it needs no settings beyond a warm-up and works with any step pattern.

The rule is stateless: every call recomputes from the histories, so nothing needs checkpointing.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping.base import MetricHistory, StopDecision, StoppingPolicy, check_int, check_number

__all__ = ["MedianPolicy", "PercentilePolicy"]


class _Curve:
    """One history's finite values as prefix sums, so a running average at any step is a bisect.

    ``decide`` runs every second over every trial; recomputing each average from scratch would
    cost (running trials x trials x steps) per call, which grows quickly on long curves.
    """

    __slots__ = ("counts", "steps", "sums")

    def __init__(self, history: MetricHistory) -> None:
        self.steps: list[int] = sorted(history.values)
        self.sums: list[float] = []
        self.counts: list[int] = []
        total, count = 0.0, 0
        for step in self.steps:
            value = _as_float(history.values[step])
            if math.isfinite(value):
                total += value
                count += 1
            self.sums.append(total)
            self.counts.append(count)

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    def running_average(self, step: int) -> float | None:
        """Mean of the finite values reported at steps <= ``step``; None when there are none."""
        i = bisect_right(self.steps, step) - 1
        if i < 0 or self.counts[i] == 0:
            return None
        return self.sums[i] / self.counts[i]


class PercentilePolicy(StoppingPolicy):
    """Keep a trial running only while its best value so far is within the best ``percentile`` %.

    ``percentile`` reads the way users think of it ("keep the best 25 %"), whichever way the
    metric is better: minimizing, the cutoff is the p-th percentile of the others' running
    averages; maximizing, the (100 - p)-th. A value equal to the cutoff continues: stopping is
    irreversible, so the benefit of the doubt goes to the trial.
    """

    name = "percentile"

    def __init__(
        self,
        *,
        percentile: float = 50.0,
        min_steps: int = 1,
        min_trials: int = 3,
        max_steps: int | None = None,
    ) -> None:
        self.percentile = check_number("percentile", percentile, low=0.0, high=100.0)
        if self.percentile <= 0.0:
            raise SpecError(f"stopping.percentile: must be in (0, 100], got {percentile!r}")
        self.min_steps = check_int("min_steps", min_steps, minimum=1)
        self.min_trials = check_int("min_trials", min_trials, minimum=1)
        # A cap below the warm-up would make the policy silently never act.
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, minimum=self.min_steps)

    def describe(self) -> str:
        return (
            f"{self.name}(percentile={self.percentile:g}, min_steps={self.min_steps}, "
            f"min_trials={self.min_trials}, max_steps={self.max_steps})"
        )

    def _cutoff_label(self) -> str:
        return "median" if self.percentile == 50.0 else f"best-{self.percentile:g}% cutoff"

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        curves = {h.index: (h, _Curve(h)) for h in histories}
        decisions: dict[int, StopDecision] = {}
        for index, (history, curve) in curves.items():
            step = curve.last_step
            if not history.running or step is None or step < self.min_steps:
                continue
            averages = []
            for other, (_, other_curve) in curves.items():
                other_step = other_curve.last_step
                if other == index or other_step is None or other_step < step:
                    continue  # only trials that got this far say what is reachable by this step
                average = other_curve.running_average(step)
                if average is not None:
                    averages.append(average)
            if len(averages) < self.min_trials:
                continue  # too little evidence at this step: say nothing rather than guess
            finite = [v for v in map(_as_float, history.values.values()) if math.isfinite(v)]
            if not finite:
                decisions[index] = StopDecision(
                    index,
                    f"every value so far up to step {step} is NaN or infinite (diverged), "
                    f"while {len(averages)} other trials have finite running averages at step {step}",
                )
                continue
            best = min(finite) if minimize else max(finite)
            q = self.percentile if minimize else 100.0 - self.percentile
            cutoff = float(np.percentile(averages, q))
            if (best > cutoff) if minimize else (best < cutoff):
                decisions[index] = StopDecision(
                    index,
                    f"best value so far {_fmt(best)} at step {step} is worse than the {self._cutoff_label()} "
                    f"({_fmt(cutoff)}) of {len(averages)} other trials' running averages at step {step}",
                )
        return [decisions[i] for i in sorted(decisions)]


class MedianPolicy(PercentilePolicy):
    """The median stopping rule: :class:`PercentilePolicy` at 50 %, the setting most studies need."""

    name = "median"

    def __init__(self, *, min_steps: int = 1, min_trials: int = 3, max_steps: int | None = None) -> None:
        super().__init__(percentile=50.0, min_steps=min_steps, min_trials=min_trials, max_steps=max_steps)

    def describe(self) -> str:
        return f"{self.name}(min_steps={self.min_steps}, min_trials={self.min_trials}, max_steps={self.max_steps})"


def _as_float(value: object) -> float:
    """A reported value as a float; anything unreadable counts as a diverged (NaN) report."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float) -> str:
    return f"{value:.4g}"
