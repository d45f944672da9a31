"""Uniform random search: the baseline every other algorithm has to beat."""

from __future__ import annotations

import numpy as np

from prefect_hpo.optim.suggesters.base import Observations, Suggester, SuggesterOptions, Suggestion, sample_feasible


class RandomSuggester(Suggester):
    """Independent uniform draws (log-uniform on log scales), rejection-sampled under constraints."""

    name = "random"
    Options = SuggesterOptions  # none

    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        d = self.encoder.dim
        return self._label(sample_feasible(self.encoder, lambda m: rng.random((m, d)), n))
