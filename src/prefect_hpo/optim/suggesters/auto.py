"""``auto``: a Sobol initial design, then GP Bayesian optimization.

Rule: the first ``max(5, 2 * d)`` trials (d = number of searched parameters) come from a
scrambled Sobol sequence, the rest from the ``gp`` suggester. This is Ax's recipe; 2·d points
are enough for a first estimate of one lengthscale per dimension, and 5 keeps tiny spaces from
trusting a model fitted to two points.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.suggesters.base import Observations, Suggester, Suggestion
from prefect_hpo.optim.suggesters.gp import GPSuggester
from prefect_hpo.optim.suggesters.sobol import SobolSuggester


class AutoSuggester(Suggester):
    name = "auto"
    multi_objective = False

    def __init__(self, encoder: SpaceEncoder, *, seed: int, n_initial: int | None = None, **gp_options: Any) -> None:
        super().__init__(encoder, seed=seed)
        self.n_initial = n_initial if n_initial is not None else max(5, 2 * encoder.dim)
        self.initial = SobolSuggester(encoder, seed=seed)
        self.model = GPSuggester(encoder, seed=seed, fallback=self.initial, **gp_options)

    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        n_initial = min(n, max(0, self.n_initial - observations.n_trials))
        out = self.initial.suggest(observations, n_initial, rng) if n_initial else []
        if n > n_initial:
            if out:  # the model must treat this call's Sobol points as in flight
                pending = np.concatenate([observations.X_pending, np.stack([s.x for s in out])])
                observations = replace(observations, X_pending=pending)
            out += self.model.suggest(observations, n - n_initial, rng)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial.state_dict(), "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial.load_state_dict(state.get("initial", {}))
        self.model.load_state_dict(state.get("model", {}))
