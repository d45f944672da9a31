"""``auto``: a bandit for a few discrete configurations, else a Sobol initial design then GP BO.

Rule, decided once from the space and the options:

* ``bandit`` (empirical-Bayes Thompson sampling, every arm tried once first) when
  ``algorithm_options.candidates`` is given, or when every searched parameter is a choice (fixed
  parameters allowed) and the space has at most ``BANDIT_MAX_ARMS`` (64) configurations. Such a
  space is a short list of unrelated configurations: a GP over category codes has nothing
  smooth to exploit and a lot of hyperparameters to fit, while a bandit needs no assumption
  beyond "each configuration has a mean" and copes with noise by replication. This is Ax's
  choice for discrete designs. ``n_initial`` and the GP options are then unused;
* ``saasbo`` (a fully Bayesian GP with a sparsity prior on the lengthscales) when the space has
  at least ``SAASBO_MIN_DIM`` (20) searched dimensions, one objective and no outcome constraints:
  the first ``SAASBO_N_INITIAL`` (10) trials come from Sobol, the rest from SAASBO. With tens of
  trials a MAP-fitted GP cannot tell which of many parameters matter; SAASBO can, at 15-25 s per
  suggestion instead of well under one (see :mod:`~prefect_hpo.optim.suggesters.saasbo`). Pass
  ``algorithm: gp`` to keep the cheap model;
* otherwise the first ``max(5, 2 * d)`` trials (d = number of searched parameters) come from a
  scrambled Sobol sequence, the rest from the ``gp`` suggester. This is Ax's recipe; 2·d points
  are enough for a first estimate of one lengthscale per dimension, and 5 keeps tiny spaces from
  trusting a model fitted to two points.

Several objectives or outcome constraints always take the ``gp`` path, even on a bandit-sized
space: the bandit ranks arms by one mean, while the ``gp`` suggester models every objective and
constrained metric (and enumerates a small finite space exactly). Only an explicit
``candidates`` list, which only the bandit can honour, is refused for several objectives, when
the experiment is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.space import ChoiceParameter, FixedParameter
from prefect_hpo.optim.suggesters.bandit import BANDIT_MAX_ARMS, BanditSuggester
from prefect_hpo.optim.suggesters.base import Observations, StrictInt, Suggester, Suggestion
from prefect_hpo.optim.suggesters.gp import GPOptions, GPSuggester
from prefect_hpo.optim.suggesters.saasbo import SAASBO_MIN_DIM, SAASBO_N_INITIAL, SAASBOSuggester, saasbo_available
from prefect_hpo.optim.suggesters.sobol import SobolSuggester


class AutoOptions(GPOptions):
    """``auto``'s options: the initial design, the bandit's candidates, and every ``gp`` option."""

    n_initial: Annotated[StrictInt, Field(ge=0)] | None = None  # Sobol trials before the model
    candidates: Any = None  # the bandit's arms (checked, naming the entry, by the bandit)


class AutoSuggester(Suggester):
    name = "auto"
    Options = AutoOptions

    def __init__(
        self,
        encoder: SpaceEncoder,
        *,
        seed: int,
        n_initial: int | None = None,
        candidates: Sequence[Mapping[str, Any]] | None = None,
        **gp_options: Any,
    ) -> None:
        super().__init__(encoder, seed=seed)
        high_dim = use_saasbo(encoder)
        default_initial = SAASBO_N_INITIAL if high_dim else max(5, 2 * encoder.dim)
        self.n_initial = n_initial if n_initial is not None else default_initial
        # built whichever path is taken, so bad GP options are refused the same way for any space
        self.initial = SobolSuggester(encoder, seed=seed)
        self.model = GPSuggester(encoder, seed=seed, fallback=self.initial, **gp_options)
        # SAASBO replaces the GP only for one unconstrained objective, known when observations
        # arrive; with several objectives the GP path (and its initial design) applies
        self.saasbo: SAASBOSuggester | None = None
        self.gp_n_initial = n_initial if n_initial is not None else max(5, 2 * encoder.dim)
        if high_dim:
            # the initial design is auto's; the SAAS model only needs two results to start
            self.saasbo = SAASBOSuggester(encoder, seed=seed, fallback=self.initial, n_initial=2)
        self.bandit: BanditSuggester | None = None
        if candidates is not None or use_bandit(encoder):
            self.bandit = BanditSuggester(encoder, seed=seed, candidates=candidates)
        # instance attributes: the experiment checks them to refuse what cannot be optimized
        # (given candidates are arms of the bandit, which sees one objective and no constraints)
        self.multi_objective = candidates is None  # type: ignore[misc]
        self.outcome_constraints = candidates is None  # type: ignore[misc]

    @property
    def step_name(self) -> str:
        return self.bandit.step_name if self.bandit is not None else super().step_name

    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        if self.bandit is not None and (not self.multi_objective or _single_unconstrained(observations)):
            return self.bandit.suggest(observations, n, rng)
        saasbo = self.saasbo is not None and _single_unconstrained(observations)
        model: Suggester = self.saasbo if saasbo else self.model  # type: ignore[assignment]
        planned = self.n_initial if saasbo else self.gp_n_initial
        n_initial = min(n, max(0, planned - observations.n_trials))
        out = self.initial.suggest(observations, n_initial, rng) if n_initial else []
        if n > n_initial:
            if out:  # the model must treat this call's Sobol points as in flight
                pending = np.concatenate([observations.X_pending, np.stack([s.x for s in out])])
                observations = replace(observations, X_pending=pending)
            out += model.suggest(observations, n - n_initial, rng)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial.state_dict(), "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial.load_state_dict(state.get("initial", {}))
        self.model.load_state_dict(state.get("model", {}))


def _single_unconstrained(observations: Observations) -> bool:
    assert observations.C is not None
    return len(observations.objectives) == 1 and observations.C.shape[1] == 0


def use_saasbo(encoder: SpaceEncoder) -> bool:
    """Whether ``auto`` models the space with SAASBO (one unconstrained objective assumed)."""
    return encoder.dim >= SAASBO_MIN_DIM and saasbo_available() and not use_bandit(encoder)


def use_bandit(encoder: SpaceEncoder) -> bool:
    """Whether ``auto`` treats the space as a short list of arms (see the module docstring)."""
    searched = [p for p in encoder.space.parameters if not isinstance(p, FixedParameter)]
    size = encoder.n_configurations
    return (
        all(isinstance(p, ChoiceParameter) for p in searched)
        and size is not None
        and size <= BANDIT_MAX_ARMS
    )
