"""ASHA: asynchronous successive halving, the stopping variant (Li et al., 2020).

Successive halving trains many configurations briefly and only the best 1/eta of them longer,
at rungs ``min_steps * eta**k``. The asynchronous version never waits for a rung to fill: a
trial is judged the moment it reaches a rung, against everyone who reached that rung before it,
so workers never idle and a slow trial never holds the others back. The price is that early
arrivals are judged against little evidence (the first one always continues); that is the
deliberate trade ASHA makes, and it is why Ray Tune and Syne Tune use the same rule.

Judgments are remembered: a trial is judged once per rung, when first seen there (trials that
reach a rung between two polls are judged together, against all of them), and the rung keeps
every value it recorded. That memory is the policy's state and is checkpointed, so a
resumed flow neither re-judges trials nor forgets who set the bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping.base import MetricHistory, StopDecision, StoppingPolicy, check_int, is_better

__all__ = ["ASHAPolicy", "check_rung_settings", "rung_levels"]


def rung_levels(min_steps: int, reduction_factor: int, max_steps: int) -> list[int]:
    """``min_steps * eta**k`` below ``max_steps``: reaching ``max_steps`` is finishing, not a rung."""
    levels: list[int] = []
    level = min_steps
    while level < max_steps:
        levels.append(level)
        level *= reduction_factor
    return levels


def check_rung_settings(name: str, min_steps: Any, reduction_factor: Any, max_steps: Any) -> tuple[int, int, int]:
    """Validate the settings ASHA and Hyperband share; ``max_steps`` has no default for either."""
    min_steps = check_int("min_steps", min_steps, minimum=1)
    reduction_factor = check_int("reduction_factor", reduction_factor, minimum=2)
    if max_steps is None:
        raise SpecError(f"stopping.max_steps: required by policy {name!r} (the steps a trial that is never stopped trains)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= min_steps:
        raise SpecError(f"stopping.max_steps: must be an int > min_steps ({min_steps}), got {max_steps!r}")
    return min_steps, reduction_factor, max_steps


class ASHAPolicy(StoppingPolicy):
    """Stop a trial at a rung unless it ranks in the best ``ceil(n / eta)`` of the ``n`` seen there.

    Ties share the better rank (stopping is irreversible, so a tie keeps the trial) and a NaN
    or infinite value ranks last. Finished trials reaching a rung are recorded there, as
    evidence, but never judged.
    """

    name = "asha"

    def __init__(self, *, min_steps: int = 1, reduction_factor: int = 3, max_steps: int | None = None) -> None:
        self.min_steps, self.reduction_factor, self.max_steps = check_rung_settings(
            self.name, min_steps, reduction_factor, max_steps
        )
        self.rungs: list[int] = rung_levels(self.min_steps, self.reduction_factor, self.max_steps)
        # rung -> {trial index: value recorded there}; NaN stands for any non-finite value.
        self._recorded: dict[int, dict[int, float]] = {rung: {} for rung in self.rungs}
        # trial index -> the rung it was stopped at; it is never recorded or judged above it.
        self._stopped: dict[int, int] = {}

    def describe(self) -> str:
        return f"{self.name}(min_steps={self.min_steps}, reduction_factor={self.reduction_factor}, max_steps={self.max_steps})"

    def resource_for(self, index: int) -> int | None:
        return self.max_steps

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        by_index = {h.index: h for h in histories}
        ordered = [by_index[i] for i in sorted(by_index)]
        decisions: dict[int, StopDecision] = {}
        # A trial stopped earlier but still reported running (its kill has not landed, or the
        # flow resumed before recording it) is stopped again: a policy's verdict does not expire.
        for history in ordered:
            if history.running and history.index in self._stopped:
                rung = self._stopped[history.index]
                decisions[history.index] = StopDecision(
                    history.index, f"already stopped at rung {rung}: it did not rank in the best 1/{self.reduction_factor} there"
                )
        # Rung by rung. Trials that reached a rung since the last call arrived together: all are
        # recorded first and each is judged against the whole rung, so none is judged against
        # fewer rivals for having a lower index (which would let it through on thin evidence).
        for rung in self.rungs:
            recorded = self._recorded[rung]
            arrivals: list[tuple[int, int, float]] = []
            for history in ordered:
                if history.index in recorded or history.index in self._stopped:
                    continue
                reached = history.value_at_or_after(rung)
                if reached is None:
                    continue
                step, raw = reached
                value = _finite_or_nan(raw)
                recorded[history.index] = value
                if history.running:  # a finished trial is evidence only: it cannot be stopped
                    arrivals.append((history.index, step, value))
            for index, step, value in arrivals:
                decision = self._judge(index, rung, step, value, minimize)
                if decision is not None:
                    self._stopped[index] = rung
                    decisions[index] = decision
        return [decisions[i] for i in sorted(decisions)]

    def _judge(self, index: int, rung: int, step: int, value: float, minimize: bool) -> StopDecision | None:
        """Rank ``value`` among everything recorded at ``rung`` (itself included)."""
        values = self._recorded[rung].values()
        n = len(values)
        rank = 1 + sum(1 for other in values if is_better(other, value, minimize))
        keep = -(-n // self.reduction_factor)  # ceil(n / eta), in integers
        if rank <= keep:
            return None
        return StopDecision(
            index,
            f"value {value:.4g} at rung {rung} (step {step}) ranks {rank} of {n} trials; "
            f"only the best {keep} (1/{self.reduction_factor}) continue",
        )

    def state_dict(self) -> dict[str, Any]:
        # JSON-ready: string keys, and None for NaN (checkpoints are written with allow_nan=False).
        # The judged (trial, rung) pairs are exactly the recorded ones, so they are not stored twice.
        return {
            "rungs": {
                str(rung): {str(i): (None if math.isnan(v) else v) for i, v in recorded.items()}
                for rung, recorded in self._recorded.items()
            },
            "stopped": {str(i): rung for i, rung in self._stopped.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; rungs these settings do not have are dropped."""
        self._recorded = {rung: {} for rung in self.rungs}
        for rung_key, recorded in dict(state.get("rungs") or {}).items():
            rung = int(rung_key)
            if rung in self._recorded:
                self._recorded[rung] = {
                    int(i): (math.nan if v is None else _finite_or_nan(v)) for i, v in dict(recorded).items()
                }
        self._stopped = {int(i): int(rung) for i, rung in dict(state.get("stopped") or {}).items()}


def _finite_or_nan(value: object) -> float:
    """Any non-finite or unreadable value becomes NaN: a diverged curve ranks last, whichever way."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan
