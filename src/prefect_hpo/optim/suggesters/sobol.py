"""Scrambled Sobol sequence: space-filling points, the initial design of Bayesian optimization."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from prefect_hpo.optim.suggesters.base import Observations, Suggester, SuggesterOptions, Suggestion, sample_feasible


class SobolSuggester(Suggester):
    """Points of one scrambled Sobol sequence seeded by the experiment seed.

    The sequence position is the only state; it is checkpointed so a resumed experiment continues
    the same sequence instead of restarting it (which would repeat points).
    """

    name = "sobol"
    Options = SuggesterOptions  # none

    def __init__(self, encoder, *, seed: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, seed=seed)
        self.position = 0

    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        engine = SobolEngine(self.encoder.dim, scramble=True, seed=self.seed % (2**31))
        if self.position:
            engine.fast_forward(self.position)

        def draw(m: int) -> np.ndarray:
            self.position += m
            return engine.draw(m, dtype=torch.float64).numpy()

        # Draw exactly n when unconstrained so the sequence is consumed one point per trial.
        if not self.encoder.space.constraints:
            return self._label(self.encoder.from_uniform(draw(n)))
        return self._label(sample_feasible(self.encoder, draw, n))

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state.get("position", 0))
