"""Hyperband, the stopping variant: several ASHA populations with different first rungs.

ASHA's weak spot is its first rung: if ``min_steps`` is too short to tell good configurations
from bad ones (slow starters), it kills good trials. Hyperband (Li et al., 2018) hedges that bet
by splitting trials into brackets that start judging later and later, down to one bracket
that never stops anything; most trials still go to the aggressive brackets, in Hyperband's
proportions, so the hedge costs little. This is the asynchronous form used by Ray Tune and
Syne Tune: each bracket is an independent :class:`ASHAPolicy` over its own trials.

Trials are assigned to brackets from their index alone (no randomness, no state), so a resumed
flow puts every trial back in the same bracket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping.asha import ASHAPolicy, check_rung_settings
from prefect_hpo.optim.stopping.base import MetricHistory, StopDecision, StoppingPolicy

__all__ = ["HyperbandPolicy"]


class HyperbandPolicy(StoppingPolicy):
    """Brackets ``s = 0..s_max``: bracket ``s`` is ASHA whose first rung is ``min_steps * eta**s``.

    ``s_max = floor(log_eta(max_steps / min_steps))``. Bracket 0 is plain ASHA; bracket
    ``s_max`` is the hedge and never stops a trial (it has no rungs, even when
    ``min_steps * eta**s_max`` is still below ``max_steps``: its purpose is to run trials in
    full). Bracket ``s`` gets trials in proportion to Hyperband's
    ``n_s = ceil((s_max + 1) / (s_max - s + 1) * eta**(s_max - s))``.
    """

    name = "hyperband"

    def __init__(self, *, min_steps: int = 1, reduction_factor: int = 3, max_steps: int | None = None) -> None:
        self.min_steps, self.reduction_factor, self.max_steps = check_rung_settings(
            self.name, min_steps, reduction_factor, max_steps
        )
        eta = self.reduction_factor
        if self.max_steps < self.min_steps * eta:
            raise SpecError(
                f"stopping.max_steps: hyperband needs max_steps >= min_steps * reduction_factor "
                f"({self.min_steps * eta}) so that it has more than one bracket, got {self.max_steps} "
                "(with fewer steps, use policy 'asha')"
            )
        # floor(log_eta(max / min)) in integers: in floats, math.log(243, 3) is 4.999999999999999.
        s_max = 0
        while self.min_steps * eta ** (s_max + 1) <= self.max_steps:
            s_max += 1
        self.s_max: int = s_max
        #: Hyperband's n_s per bracket: the relative share of trials each bracket gets.
        self.bracket_sizes: list[int] = [
            -(-(s_max + 1) * eta ** (s_max - s) // (s_max - s + 1)) for s in range(s_max + 1)
        ]
        self._asha: list[ASHAPolicy] = [
            ASHAPolicy(min_steps=self.min_steps * eta**s, reduction_factor=eta, max_steps=self.max_steps)
            for s in range(s_max)
        ]
        # Smooth weighted round robin (as in nginx), extended lazily: one full period can be
        # long (the sizes grow like eta**s_max) while trial indices stay small.
        self._schedule: list[int] = []
        self._credit: list[int] = [0] * (s_max + 1)

    @property
    def brackets(self) -> list[list[int]]:
        """The rungs of each bracket; the last one is empty (it never stops a trial)."""
        return [asha.rungs for asha in self._asha] + [[]]

    def describe(self) -> str:
        return f"{self.name}(min_steps={self.min_steps}, reduction_factor={self.reduction_factor}, max_steps={self.max_steps})"

    def resource_for(self, index: int) -> int | None:
        return self.max_steps

    def bracket_of(self, index: int) -> int:
        """The bracket trial ``index`` belongs to: interleaved, so the first few trials already
        cover several brackets, and exactly ``n_s`` of every ``sum(n_s)`` consecutive indices
        go to bracket ``s``."""
        period = sum(self.bracket_sizes)
        position = index % period
        while len(self._schedule) <= position:
            for s, size in enumerate(self.bracket_sizes):
                self._credit[s] += size
            chosen = max(range(len(self._credit)), key=lambda s: (self._credit[s], -s))
            self._credit[chosen] -= period
            self._schedule.append(chosen)
        return self._schedule[position]

    def decide(self, histories: Sequence[MetricHistory], minimize: bool) -> list[StopDecision]:
        groups: dict[int, list[MetricHistory]] = defaultdict(list)
        for history in histories:
            bracket = self.bracket_of(history.index)
            if bracket < self.s_max:
                groups[bracket].append(history)
        decisions: dict[int, StopDecision] = {}
        for bracket, group in groups.items():
            asha = self._asha[bracket]
            rungs = ", ".join(map(str, asha.rungs))
            for decision in asha.decide(group, minimize):
                decisions[decision.index] = StopDecision(
                    decision.index, f"hyperband bracket {bracket} of 0..{self.s_max} (rungs {rungs}): {decision.reason}"
                )
        return [decisions[i] for i in sorted(decisions)]

    def state_dict(self) -> dict[str, Any]:
        # The assignment is recomputed from indices; only the brackets' memories need saving.
        return {"brackets": {str(s): asha.state_dict() for s, asha in enumerate(self._asha)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = dict(state.get("brackets") or {})
        for s, asha in enumerate(self._asha):
            asha.load_state_dict(saved.get(str(s)) or {})
