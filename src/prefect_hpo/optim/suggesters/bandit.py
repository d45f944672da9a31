"""``bandit``: Thompson sampling over a finite set of arms, with empirical-Bayes shrinkage.

When the search space is a short list of configurations (a few optimizers times a few batch
sizes, or hand-picked candidate configs), a GP over their encoding has little to learn from
and a lot to assume; the natural model is one unknown mean per configuration ("arm"). This is
what Ax does for discrete designs (``ThompsonSampler`` with ``EmpiricalBayesThompsonSampler``):
arm means are shrunk toward the grand mean before Thompson sampling, so an arm that got lucky
once cannot grab every later trial.

Arms are either every constraint-feasible configuration of a finite space (every searched
parameter a choice, or an int/stepped range with few values; at most ``max_arms``, default 64),
or an explicit list ``algorithm_options={"candidates": [{param: value, ...}, ...]}``.

Model, for one objective with ``Y`` oriented larger-is-better:

* each completed trial is mapped back to its arm by its encoded point; a trial that matches no
  arm (a manual trial elsewhere in the space) is ignored, with a debug log line;
* per observed arm: ``n_a`` observations with mean ``ybar_a``;
* noise variance ``sigma^2``: the pooled within-arm variance once any arm has a replicate.
  Before that, with ``k >= 2`` arms observed once each, the spread of the means is the only
  information, and it mixes noise and signal in unknown proportions. Attributing all of it to
  noise (``sigma^2 = var(ybar)``) makes the method-of-moments ``tau^2`` exactly zero: every arm
  is shrunk onto the grand mean and Thompson sampling turns into uniform random choice, learning
  nothing from the first round. Attributing none of it makes the first round's winner look
  certain. So the prior rule splits it evenly: ``sigma^2 = var(ybar) / 2``, which makes the
  single-observation shrinkage factor 1/2. With fewer than two arms observed ``sigma^2 = 1``:
  all arm means then equal the grand mean and only variance *ratios* decide the draws, so the
  scale is irrelevant;
* between-arm prior ``N(mu, tau^2)``: ``mu`` the mean of the arm means and, with ``k >= 2``,
  ``tau^2 = max(var(ybar) - mean(sigma^2 / n_a), floor)`` (method of moments, positive part, as
  positive-part James-Stein; ``floor = 1e-12 * mean(y^2)``, in the objective's own units); with
  ``k < 2`` there is no between-arm spread to measure and ``tau^2 = sigma^2`` (differences
  between arms assumed as large as the noise);
* posterior of an observed arm: ``B_a = (sigma^2/n_a) / (sigma^2/n_a + tau^2)``, mean
  ``mu + (1 - B_a)(ybar_a - mu)``, variance ``(1 - B_a) sigma^2 / n_a``; an arm never pulled
  gets the predictive prior ``N(mu, tau^2 + sigma^2)``.

Allocation: every arm never tried (not completed, in flight or failed) is handed out once first,
in a seeded random order (Ax's factorial step), so each arm has data before any is repeated.
After that each requested trial is the argmax of one joint posterior draw. In-flight trials
(and points picked earlier in the same call) count as extra pulls of their arm *for the variance
only*: the variance formula above uses ``n_a + pulls_a`` while the mean keeps ``B_a`` from the
data (an arm with pulls but no data keeps mean ``mu``), so a batch of parallel asks spreads over
the arms that are plausibly best instead of repeating one. A failed (or abandoned) trial is
treated the same way, as a pull that brought no data: the arm stays eligible, since a crash may
be transient, but an arm that only ever fails is pinned ever more tightly at the grand mean and
stops being drawn once better arms are known. Failures are not penalised beyond that: a failure
has no objective value, and inventing one would need a scale the user never gave.

No state beyond the arm list, which comes from the space and the options: restoring an
experiment restores the suggester exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefect_hpo.errors import SearchSpaceError, SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.space import Value
from prefect_hpo.optim.suggesters.base import Observations, StrictInt, Suggester, SuggesterOptions, Suggestion

__all__ = ["BANDIT_MAX_ARMS", "BanditSuggester"]

logger = logging.getLogger(__name__)

#: Default largest number of arms enumerated from a finite space. Beyond a few dozen arms,
#: trying each once before learning anything is a poor use of a budget; a GP shares information
#: between nearby configurations and should be used instead.
BANDIT_MAX_ARMS = 64

#: Two encoded points closer than this (max-norm) are the same arm; it absorbs the floating-point
#: round trip params -> x -> params -> x of log-scaled floats.
_MATCH_TOL = 1e-9


@dataclass(frozen=True)
class _Posterior:
    """Independent normal beliefs about each arm's mean (larger is better)."""

    mean: np.ndarray  # (n_arms,)
    var: np.ndarray  # (n_arms,)


class BanditOptions(SuggesterOptions):
    candidates: Any = None  # a list of parameter dicts; checked (naming the entry) by the suggester
    max_arms: StrictInt = BANDIT_MAX_ARMS  # the largest space enumerated without candidates (>= 1)


class BanditSuggester(Suggester):
    """Empirical-Bayes Thompson sampling over a finite list of configurations; see the module docstring.

    Options (``algorithm_options``): ``candidates`` (a list of parameter dicts to use as the
    arms, instead of every configuration of the space) and ``max_arms`` (the largest space that
    is enumerated when no candidates are given).
    """

    name = "bandit"
    Options = BanditOptions
    multi_objective = False
    #: Arms are scored on the objective alone; a constraint would be silently ignored.
    outcome_constraints = False

    def __init__(
        self,
        encoder: SpaceEncoder,
        *,
        seed: int,
        candidates: Sequence[Mapping[str, Any]] | None = None,
        max_arms: int = BANDIT_MAX_ARMS,
    ) -> None:
        super().__init__(encoder, seed=seed)
        if isinstance(max_arms, bool) or not isinstance(max_arms, int) or max_arms < 1:
            raise SpecError(f"algorithm_options.max_arms: must be a positive int, got {max_arms!r}")
        self.max_arms = max_arms
        if candidates is not None:
            self.arm_params, self.arms = _candidate_arms(encoder, candidates)
        else:
            self.arms = _space_arms(encoder, max_arms)
            self.arm_params = [encoder.decode(x) for x in self.arms]

    @property
    def step_name(self) -> str:
        return "allocate_arms"  # the bandit allocation step, as the flow shows it

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    # ---- the interface --------------------------------------------------------------------
    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        _check_single_objective(observations)
        stats = self._arm_stats(observations)
        extra_pulls = stats.pending + stats.failed
        tried = (stats.counts + extra_pulls) > 0
        untried = np.flatnonzero(~tried)
        picks = [int(a) for a in rng.permutation(untried)[:n]]
        for a in picks:  # this call's own first pulls are in flight for the draws that follow
            extra_pulls[a] += 1
        for _ in range(n - len(picks)):
            post = self._posterior(stats, extra_pulls)
            a = int(np.argmax(rng.normal(post.mean, np.sqrt(post.var))))
            picks.append(a)
            extra_pulls[a] += 1
        return [Suggestion(x=self.arms[a], suggester=self.name, params=dict(self.arm_params[a])) for a in picks]

    def arm_probabilities(
        self,
        observations: Observations,
        n_draws: int = 10_000,
        rng: np.random.Generator | None = None,
    ) -> list[tuple[dict[str, Value], float]]:
        """Each arm's posterior probability of being the best, best first (Monte Carlo).

        This is Thompson sampling's allocation, the share of the next trials each arm would get,
        which is what a log line or a UI should show. It uses the completed trials only: in-flight
        and failed pulls are a device for spreading a batch, not knowledge about the arms.
        """
        _check_single_objective(observations)
        if n_draws < 1:
            raise SpecError(f"arm_probabilities: n_draws must be positive, got {n_draws}")
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        stats = self._arm_stats(observations)
        post = self._posterior(stats, np.zeros(self.n_arms))
        wins = np.zeros(self.n_arms)
        block = max(1, 1_000_000 // self.n_arms)  # bound the memory of one block of draws
        for start in range(0, n_draws, block):
            size = min(block, n_draws - start)
            draws = rng.normal(post.mean, np.sqrt(post.var), size=(size, self.n_arms))
            wins += np.bincount(np.argmax(draws, axis=1), minlength=self.n_arms)
        probs = wins / n_draws
        order = sorted(range(self.n_arms), key=lambda a: (-probs[a], a))
        return [(dict(self.arm_params[a]), float(probs[a])) for a in order]

    def arm_posteriors(self, observations: Observations) -> list[tuple[dict[str, Value], float, float]]:
        """Each arm's params with the posterior mean and standard deviation of its mean, in arm order.

        Values are on the suggester's larger-is-better scale (a minimized objective is negated),
        from the completed trials only; they show how much each arm's raw average was shrunk.
        """
        _check_single_objective(observations)
        post = self._posterior(self._arm_stats(observations), np.zeros(self.n_arms))
        return [
            (dict(params), float(m), float(np.sqrt(v))) for params, m, v in zip(self.arm_params, post.mean, post.var)
        ]

    # ---- the model --------------------------------------------------------------------------
    def _arm_stats(self, observations: Observations) -> _ArmStats:
        y = observations.Y[:, 0] if len(observations.Y) else np.zeros(0)
        done = self._match(observations.X, "completed")
        keep = done >= 0
        done, y = done[keep], y[keep]
        counts = np.bincount(done, minlength=self.n_arms).astype(np.float64)
        sums = np.bincount(done, weights=y, minlength=self.n_arms)
        means = np.divide(sums, counts, out=np.zeros(self.n_arms), where=counts > 0)
        within = float(((y - means[done]) ** 2).sum()) if len(y) else 0.0
        return _ArmStats(
            counts=counts,
            means=means,
            within_ss=within,
            scale=float(np.mean(y**2)) if len(y) else 0.0,
            pending=self._pull_counts(observations.X_pending, "in-flight"),
            failed=self._pull_counts(observations.X_failed, "failed"),
        )

    def _posterior(self, stats: _ArmStats, extra_pulls: np.ndarray) -> _Posterior:
        """The empirical-Bayes posterior of every arm's mean (rules in the module docstring)."""
        counts = stats.counts
        observed = counts > 0
        k = int(observed.sum())
        floor = max(1e-12 * stats.scale, 1e-300)  # relative: losses of 1e-8 are not all noise
        ybar = stats.means[observed]
        n_obs = counts[observed]
        df = int(counts.sum()) - k
        between = float(np.var(ybar, ddof=1)) if k >= 2 else 0.0
        if df > 0:
            sigma2 = stats.within_ss / df
        elif k >= 2:
            sigma2 = between / 2.0
        else:
            sigma2 = 1.0
        sigma2 = max(sigma2, floor)
        if k >= 2:
            tau2 = max(between - float(np.mean(sigma2 / n_obs)), floor)
        else:
            tau2 = sigma2
        mu = float(ybar.mean()) if k else 0.0

        mean = np.full(self.n_arms, mu)
        var = np.full(self.n_arms, tau2 + sigma2)
        # the mean is shrunk with the data's own count ...
        b_data = (sigma2 / n_obs) / (sigma2 / n_obs + tau2)
        mean[observed] = mu + (1.0 - b_data) * (ybar - mu)
        # ... the variance also with the pulls that brought no data (yet)
        pulls = counts + extra_pulls
        pulled = pulls > 0
        se2 = sigma2 / pulls[pulled]
        var[pulled] = (1.0 - se2 / (se2 + tau2)) * se2
        return _Posterior(mean=mean, var=np.maximum(var, floor))

    def _match(self, X: np.ndarray, what: str) -> np.ndarray:
        """The arm index of each row of ``X``, or -1 for a point that is not an arm."""
        out = np.full(len(X), -1, dtype=np.int64)
        if not len(X):
            return out
        if self.encoder.dim == 0:
            return np.zeros(len(X), dtype=np.int64)
        for start in range(0, len(X), 256):
            rows = X[start : start + 256]
            dist = np.abs(rows[:, None, :] - self.arms[None, :, :]).max(axis=2)
            best = dist.argmin(axis=1)
            hit = dist[np.arange(len(rows)), best] <= _MATCH_TOL
            out[start : start + len(rows)] = np.where(hit, best, -1)
        misses = int((out < 0).sum())
        if misses:
            logger.debug("bandit: %d %s trial(s) match no arm and are ignored", misses, what)
        return out

    def _pull_counts(self, X: np.ndarray, what: str) -> np.ndarray:
        arms = self._match(X, what)
        return np.bincount(arms[arms >= 0], minlength=self.n_arms).astype(np.float64)


@dataclass
class _ArmStats:
    counts: np.ndarray  # completed observations per arm
    means: np.ndarray  # their mean (0 where none)
    within_ss: float  # sum of squared deviations from the arm means
    scale: float  # mean of y^2, so that variance floors follow the objective's units
    pending: np.ndarray  # in-flight pulls per arm
    failed: np.ndarray  # failed or abandoned pulls per arm


def _check_single_objective(observations: Observations) -> None:
    if observations.Y.shape[1] != 1:
        raise SpecError(f"algorithm 'bandit': optimizes one objective, got {list(observations.objectives)}")


def _space_arms(encoder: SpaceEncoder, max_arms: int) -> np.ndarray:
    size = encoder.n_configurations
    if size is None:
        continuous = [encoder.names[i] for i in encoder.continuous_dims]
        raise SpecError(
            f"algorithm 'bandit': parameters {continuous} take continuous values, so the space has no "
            "finite set of arms; give algorithm_options.candidates, or use algorithm 'auto'"
        )
    if size > max_arms:
        raise SpecError(
            f"algorithm 'bandit': the space has {size} configurations, more than max_arms={max_arms}; "
            "give a short list as algorithm_options.candidates, or use algorithm 'grid' or 'auto'"
        )
    arms = np.zeros((1, 0)) if encoder.dim == 0 else encoder.all_points()
    arms = arms[encoder.feasible(arms)]
    if not len(arms):
        exprs = [c.expression for c in encoder.space.constraints]
        raise SearchSpaceError(f"constraints {exprs}: no configuration of the space satisfies them")
    return arms


def _candidate_arms(
    encoder: SpaceEncoder, candidates: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Value]], np.ndarray]:
    if isinstance(candidates, (str, bytes, Mapping)) or not isinstance(candidates, Sequence):
        raise SpecError(f"algorithm_options.candidates: expected a list of parameter dicts, got {candidates!r}")
    if not candidates:
        raise SpecError("algorithm_options.candidates: is empty; give at least one configuration")
    typed: list[dict[str, Value]] = []
    points: list[np.ndarray] = []
    for i, raw in enumerate(candidates):
        where = f"algorithm_options.candidates[{i}]"
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: expected a dict of parameter values, got {raw!r}")
        try:
            params = encoder.space.validate_params(raw)
        except SearchSpaceError as exc:
            raise SpecError(f"{where}: {exc}") from None
        x = encoder.encode(params)
        for j, other in enumerate(points):
            if np.abs(x - other).max(initial=0.0) <= _MATCH_TOL:
                raise SpecError(f"{where}: duplicates candidates[{j}] ({params}); each arm must be listed once")
        typed.append(params)
        points.append(x)
    return typed, np.stack(points)
