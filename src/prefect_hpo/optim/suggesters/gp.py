"""Bayesian optimization with BoTorch: a GP surrogate, log-EI acquisition, mixed-space optimizer.

The split follows BoTorch's own: :mod:`prefect_hpo.optim.gp_model` builds and fits the surrogate,
this module picks the acquisition function and the optimizer that suits the space:

* nothing in flight and one point wanted: analytic ``LogExpectedImprovement`` (exact, no Monte
  Carlo, cheapest to optimize);
* pending trials or a batch: ``qLogNoisyExpectedImprovement`` with the in-flight points as
  ``X_pending``, optimized sequentially-greedily so a batch spreads out;
* continuous spaces: ``optimize_acqf`` (with the linear constraints); spaces with ints, steps or
  choices: ``optimize_acqf_mixed_alternating``, which searches the discrete values themselves
  instead of rounding a continuous optimum; small finite spaces: every unseen point is scored.

With several objectives or outcome constraints there are several outcomes to model, and each
gets a GP of its own (``ModelListGP`` of the same single-output GPs, each with its own warm-started
:class:`~prefect_hpo.optim.gp_model.SurrogateFitter`). Independent GPs rather than one batched
multi-output GP: an accuracy and a latency have nothing in common (lengthscales, noise, output
scale), the batched model would share none of it anyway, and separate fitters keep the one-
objective model, its warm start and its tuned benchmarks exactly as they were. Then:

* one objective with outcome constraints: ``qLogNoisyExpectedImprovement`` weighted by the
  modelled probability of feasibility, always (the analytic LogEI takes no constraints);
* 2-3 objectives: ``qLogNoisyExpectedHypervolumeImprovement`` (Daulton et al. 2021, with the
  log-space numerics of Ament et al. 2023), the expected growth of the dominated hypervolume
  measured from the experiment's reference point, with in-flight trials as ``X_pending``;
* 4 or more objectives: ``qLogNParEGO``, qLogNEI on a random Chebyshev scalarization per point.
  The exact hypervolume and its box decompositions grow exponentially with the number of
  objectives (and NEHVI builds one per MC sample), while ParEGO costs what single-objective
  qLogNEI costs whatever the count; it is BoTorch's recommendation beyond three objectives.

The same space-dependent optimizers serve every acquisition function.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
from botorch.acquisition.multi_objective.parego import qLogNParEGO
from botorch.acquisition.objective import GenericMCObjective
from botorch.exceptions import BotorchError
from botorch.exceptions.warnings import OptimizationWarning
from botorch.models import ModelListGP
from linear_operator.utils.warnings import NumericalWarning
from botorch.optim import optimize_acqf, optimize_acqf_discrete, optimize_acqf_mixed_alternating
from botorch.sampling import SobolQMCNormalSampler
from linear_operator.utils.errors import NotPSDError
from linear_operator.utils.errors import NanError
from pydantic import Field

from prefect_hpo.errors import SearchSpaceExhaustedError, SpecError
from prefect_hpo.optim import pareto
from prefect_hpo.optim.acquisition import CachedLogExpectedImprovement
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.gp_model import SurrogateFitter, exact_inference
from prefect_hpo.optim.suggesters.base import (
    Count,
    Observations,
    StrictBool,
    StrictFloat,
    StrictInt,
    Suggester,
    SuggesterOptions,
    Suggestion,
)
from prefect_hpo.optim.suggesters.sobol import SobolSuggester

logger = logging.getLogger(__name__)

#: Finite spaces up to this many points are optimized by scoring every unseen point.
MAX_ENUMERATED_POINTS = 4096

DTYPE = torch.float64

#: Up to this many objectives the exact hypervolume (qLogNEHVI) is affordable; beyond, ParEGO.
MAX_HYPERVOLUME_OBJECTIVES = 3

#: Sharpness of the sigmoid that stands in for "constraint satisfied" (BoTorch's ``eta``), as a
#: fraction of the spread of that constraint's observed slacks, so that a latency in ms and a
#: parameter count in millions are judged equally sharply.
CONSTRAINT_ETA = 1e-3


class GPOptions(SuggesterOptions):
    """``gp``'s options: the hand-over to the model, the acquisition and its optimizer, then the
    surrogate's (:class:`~prefect_hpo.optim.gp_model.SurrogateFitter`, which checks ``kernel``)."""

    min_observations: Count = 2  # completed trials before the model takes over from the fallback
    num_restarts: Count = 8
    raw_samples: Count = 512
    acqf_maxiter: Count = 200
    mc_samples: Count = 128
    threads: Annotated[StrictInt, Field(ge=0)] | None = None  # default $PREFECT_HPO_TORCH_THREADS or 1
    acquisition: Literal["auto", "qlognei"] = "auto"
    optimizer_options: dict[str, Any] | None = None  # passed to BoTorch's optimize_acqf
    mixed_optimizer_options: dict[str, Any] | None = None  # passed to optimize_acqf_mixed_alternating
    kernel: str = "matern"
    noise_floor: Annotated[StrictFloat, Field(gt=0)] = 1e-6
    warm_start: StrictBool = True
    refit_every: Count = 5
    fit_maxiter: Count = 200
    warm_fraction: Count = 16


class GPSuggester(Suggester):
    """GP-based Bayesian optimization, for one or several objectives, with outcome constraints.

    Until ``min_observations`` trials have completed there is nothing to model, so points come
    from ``fallback`` (a Sobol sequence, shared with ``auto`` so the two never repeat each other's
    points); that hand-over, and any fitting failure, is logged with its reason.

    Options (``algorithm_options``): ``num_restarts``/``raw_samples``/``acqf_maxiter`` for the
    acquisition optimizer, ``acquisition`` (``"auto"``: analytic LogEI when nothing is in flight;
    ``"qlognei"``: always qLogNEI, for noisy objectives), ``mc_samples`` for qLogNEI, ``threads`` (default
    ``PREFECT_HPO_TORCH_THREADS`` or 1), extra ``optimizer_options``/``mixed_optimizer_options`` passed to
    BoTorch, and the model's ``kernel``, ``noise_floor``, ``warm_start``, ``refit_every``,
    ``fit_maxiter`` (see :class:`~prefect_hpo.optim.gp_model.SurrogateFitter`). With several
    objectives or outcome constraints every outcome gets its own fitter with the same options.
    """

    name = "gp"
    Options: ClassVar[type[SuggesterOptions]] = GPOptions
    multi_objective = True
    #: What a failed fit or acquisition optimization may raise: the fallback serves this one
    #: suggestion, with the reason logged (a TypeError or AttributeError is a bug and propagates).
    model_errors: ClassVar[tuple[type[Exception], ...]] = (BotorchError, NotPSDError, NanError, RuntimeError)

    def __init__(
        self,
        encoder: SpaceEncoder,
        *,
        seed: int,
        fallback: Suggester | None = None,
        min_observations: int = 2,
        num_restarts: int = 8,
        raw_samples: int = 512,
        acqf_maxiter: int = 200,
        mc_samples: int = 128,
        threads: int | None = None,
        acquisition: str = "auto",
        optimizer_options: dict[str, Any] | None = None,
        mixed_optimizer_options: dict[str, Any] | None = None,
        **model_options: Any,
    ) -> None:
        super().__init__(encoder, seed=seed)
        self.fallback = fallback if fallback is not None else SobolSuggester(encoder, seed=seed)
        self.min_observations = max(1, min_observations)
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples
        self.acqf_maxiter = acqf_maxiter
        self.mc_samples = mc_samples
        self.threads = threads if threads is not None else int(os.environ.get("PREFECT_HPO_TORCH_THREADS", "1"))
        if acquisition not in ("auto", "qlognei"):
            raise SpecError(f"algorithm_options.acquisition: {acquisition!r} is not 'auto' or 'qlognei'")
        self.acquisition = acquisition
        self.optimizer_options = dict(optimizer_options or {})
        self.mixed_optimizer_options = dict(mixed_optimizer_options or {})
        self.model_options = dict(model_options)
        self.fitter = SurrogateFitter(encoder, **model_options)
        # fitters of the second and later outcomes (objectives, then constraints), made on demand
        self.outcome_fitters: list[SurrogateFitter] = []

    # ---- the interface --------------------------------------------------------------------
    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        if len(observations.X) < self.min_observations:
            logger.info(
                "%s: %d completed trial(s), fewer than the %d a model needs; using %s for %d point(s)",
                self.name, len(observations.X), self.min_observations, self.fallback.name, n,
            )
            return self.fallback.suggest(observations, n, rng)
        torch_seed = int(rng.integers(2**31 - 1))
        try:
            with _torch_threads(self.threads), torch.random.fork_rng(), warnings.catch_warnings(), exact_inference():
                # BoTorch reports routine numerical events (line-search stops, jitter added to a
                # Cholesky) as warnings; they are not actionable for a user of the suggester.
                warnings.simplefilter("ignore", category=OptimizationWarning)
                warnings.simplefilter("ignore", category=NumericalWarning)
                warnings.simplefilter("ignore", category=RuntimeWarning)
                torch.manual_seed(torch_seed)
                X = self._suggest_with_model(observations, n)
        except self.model_errors as exc:
            logger.warning("%s: model-based suggestion failed (%s: %s); using %s instead",
                           self.name, type(exc).__name__, exc, self.fallback.name)
            return self.fallback.suggest(observations, n, rng)
        X = self.encoder.snap(self.encoder.pull_inside(self.encoder.snap(X)))
        return self._feasible_or_fallback(X, observations, rng)

    def _feasible_or_fallback(self, X: np.ndarray, observations: Observations, rng: np.random.Generator) -> list[Suggestion]:
        """Keep model points that satisfy the constraints after snapping to valid values.

        Rounding a relaxed dimension (an int range too large to enumerate) can push a point
        across a linear constraint; such a point is replaced by a fallback point, with a log line.
        """
        ok = self.encoder.feasible(X)
        out = self._label(X[ok])
        if not ok.all():
            missing = int((~ok).sum())
            logger.warning("gp: %d point(s) broke a constraint after rounding; using %s for them", missing, self.fallback.name)
            out += self.fallback.suggest(observations, missing, rng)
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"fitter": self.fitter.state_dict()}
        if self.outcome_fitters:  # absent for one unconstrained objective: its state is unchanged
            state["outcome_fitters"] = [f.state_dict() for f in self.outcome_fitters]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fitter.load_state_dict(state.get("fitter", {}))
        self.outcome_fitters = []
        for fitter_state in state.get("outcome_fitters", []):
            fitter = SurrogateFitter(self.encoder, **self.model_options)
            fitter.load_state_dict(fitter_state)
            self.outcome_fitters.append(fitter)

    # ---- model -> acquisition -> optimizer -------------------------------------------------
    def _suggest_with_model(self, obs: Observations, n: int) -> np.ndarray:
        assert obs.C is not None
        if obs.Y.shape[1] > 1 or obs.C.shape[1] > 0:
            return self._suggest_multi_outcome(obs, n).detach().cpu().numpy()
        train_X = torch.tensor(obs.X, dtype=DTYPE)
        train_Y = torch.tensor(obs.Y, dtype=DTYPE)
        model = self.fitter.fit(train_X, train_Y)
        pending = torch.tensor(obs.X_pending, dtype=DTYPE) if len(obs.X_pending) else None
        acqf = self._acquisition(model, train_X, pending, n)
        candidates = self._optimize(acqf, obs, n)
        return candidates.detach().cpu().numpy()

    # ---- several objectives, outcome constraints ---------------------------------------------
    def _suggest_multi_outcome(self, obs: Observations, n: int) -> torch.Tensor:
        """Objectives then constraint slacks as outcomes of one model list (see the module doc)."""
        assert obs.C is not None
        n_objectives = obs.Y.shape[1]
        train_X = torch.tensor(obs.X, dtype=DTYPE)
        model = self._fit_outcomes(train_X, torch.tensor(np.concatenate([obs.Y, obs.C], axis=1), dtype=DTYPE))
        pending = torch.tensor(obs.X_pending, dtype=DTYPE) if len(obs.X_pending) else None
        constraints, eta = self._constraints(obs.C, n_objectives)
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]))
        if n_objectives == 1:
            acqf: AcquisitionFunction = qLogNoisyExpectedImprovement(
                model,
                X_baseline=train_X,
                sampler=sampler,
                objective=GenericMCObjective(_first_outcome),
                constraints=constraints,
                eta=eta,
                X_pending=pending,
                prune_baseline=True,
                cache_root=False,
            )
            return self._optimize(acqf, obs, n)
        # only the objectives enter the hypervolume; the constraint outcomes are read by callables
        objective = IdentityMCMultiOutputObjective(outcomes=list(range(n_objectives))) if constraints else None
        if n_objectives <= MAX_HYPERVOLUME_OBJECTIVES:
            acqf = qLogNoisyExpectedHypervolumeImprovement(
                model,
                ref_point=torch.as_tensor(self._reference_point(obs), dtype=DTYPE),
                X_baseline=train_X,
                sampler=sampler,
                objective=objective,
                constraints=constraints,
                eta=eta,
                X_pending=pending,
                prune_baseline=True,
                cache_root=False,
            )
            return self._optimize(acqf, obs, n)
        # ParEGO draws one scalarization per acquisition function: a batch gets one per point,
        # each point treating the ones picked before it as in flight (as BoTorch's tutorial does)
        picked: list[torch.Tensor] = []
        for _ in range(n):
            in_flight = [t for t in (pending, *picked) if t is not None]
            batch_pending = torch.cat(in_flight) if in_flight else None
            acqf = qLogNParEGO(
                model,
                X_baseline=train_X,
                sampler=SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples])),
                objective=objective,
                constraints=constraints,
                eta=eta,
                X_pending=batch_pending,
                prune_baseline=True,
                cache_root=False,
            )
            seen = obs if batch_pending is None else replace(obs, X_pending=batch_pending.numpy())
            picked.append(self._optimize(acqf, seen, 1))
        return torch.cat(picked)

    def _fit_outcomes(self, train_X: torch.Tensor, outcomes: torch.Tensor) -> ModelListGP:
        """One warm-started GP per outcome column; the first reuses the one-objective fitter."""
        while len(self.outcome_fitters) < outcomes.shape[1] - 1:
            self.outcome_fitters.append(SurrogateFitter(self.encoder, **self.model_options))
        fitters = [self.fitter, *self.outcome_fitters]
        return ModelListGP(*(fitters[i].fit(train_X, outcomes[:, i : i + 1]) for i in range(outcomes.shape[1])))

    def _constraints(self, C: np.ndarray, offset: int) -> tuple[list[Any] | None, torch.Tensor | float]:
        """Callables reading each constraint's slack outcome (feasible when <= 0), and their ``eta``.

        BoTorch multiplies the improvement by ``sigmoid(-slack / eta)``, a smooth probability of
        feasibility; ``eta`` is scaled by each slack's observed spread (see ``CONSTRAINT_ETA``).
        """
        if C.shape[1] == 0:
            return None, CONSTRAINT_ETA
        constraints = [_OutcomeColumn(offset + j) for j in range(C.shape[1])]
        spread = C.std(axis=0) if len(C) > 1 else np.zeros(C.shape[1])
        fallback = np.abs(C).max(axis=0) if len(C) else np.ones(C.shape[1])
        scale = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
        return constraints, torch.as_tensor(CONSTRAINT_ETA * scale, dtype=DTYPE)

    @staticmethod
    def _reference_point(obs: Observations) -> np.ndarray:
        """The experiment's reference point; before any feasible trial, one inferred from all.

        With thresholds missing and no feasible trial yet the experiment has no reference point;
        hypervolume is then measured from the front of every observation, feasible or not, which
        is the best guess of where the objectives' interesting range lies.
        """
        if obs.reference_point is not None:
            return np.array(obs.reference_point, dtype=np.float64)
        front = obs.Y[pareto.non_dominated(obs.Y)]
        reference = pareto.infer_reference_point(front, np.asarray(obs.objective_thresholds))
        if reference is None:  # no observation at all; suggest() falls back before getting here
            raise BotorchError("no observation to infer a reference point from")
        return reference

    def _acquisition(self, model: Any, train_X: torch.Tensor, pending: torch.Tensor | None, n: int) -> AcquisitionFunction:
        if pending is None and n == 1 and self.acquisition == "auto":
            return CachedLogExpectedImprovement(model)
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]))
        return qLogNoisyExpectedImprovement(
            model, X_baseline=train_X, X_pending=pending, sampler=sampler, prune_baseline=True, cache_root=False
        )

    def _optimize(self, acqf: AcquisitionFunction, obs: Observations, n: int) -> torch.Tensor:
        enc = self.encoder
        bounds = torch.as_tensor(enc.bounds, dtype=DTYPE)
        constraints = [
            (torch.as_tensor(idx), torch.as_tensor(coef, dtype=DTYPE), float(rhs))
            for idx, coef, rhs in enc.inequality_constraints
        ] or None
        size = enc.n_configurations
        if size is not None and size <= MAX_ENUMERATED_POINTS:
            return self._optimize_finite(acqf, obs, n)
        if enc.discrete_dims or enc.categorical_dims:
            X, _ = optimize_acqf_mixed_alternating(
                acqf,
                bounds=bounds,
                discrete_dims=enc.discrete_dims,
                cat_dims=enc.categorical_dims,
                q=n,
                num_restarts=self.num_restarts,
                raw_samples=self.raw_samples,
                inequality_constraints=constraints,
                options=self.mixed_optimizer_options or None,
            )
            return X
        X, _ = optimize_acqf(
            acqf,
            bounds=bounds,
            q=n,
            num_restarts=self.num_restarts,
            raw_samples=self.raw_samples,
            inequality_constraints=constraints,
            sequential=n > 1,
            # A line-search warning in one restart is not worth re-running every restart.
            retry_on_optimization_warning=False,
            options={
                # every raw sample scored in one batched call; restarts optimized as one batch
                "init_batch_limit": self.raw_samples * 2,
                "batch_limit": self.num_restarts,
                "maxiter": self.acqf_maxiter,
                # seed restarts near the best observed points: precise refinement of the incumbent
                "sample_around_best": True,
                # log-EI is optimized on a log scale: a relative change below 1e-5 no longer moves
                # the argmax meaningfully, and stopping there halves the L-BFGS iterations
                "ftol": 1e-5,
                "factr": None,
                **self.optimizer_options,
            },
        )
        return X

    def _optimize_finite(self, acqf: AcquisitionFunction, obs: Observations, n: int) -> torch.Tensor:
        """Score every feasible point not yet tried; exact and cheap for small discrete spaces."""
        points = self.encoder.all_points()
        points = points[self.encoder.feasible(points)]
        seen = {tuple(np.round(x, 12)) for x in obs.X_seen}
        unseen = np.array([x for x in points if tuple(np.round(x, 12)) not in seen])
        if len(unseen) < n:
            raise SearchSpaceExhaustedError(
                f"gp: the space has {len(points)} feasible points and only {len(unseen)} are untried (asked for {n})"
            )
        X, _ = optimize_acqf_discrete(acqf, q=n, choices=torch.as_tensor(unseen, dtype=DTYPE), unique=True)
        return X


def _first_outcome(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
    """The objective among the model list's outcomes (the rest are constraint slacks)."""
    return samples[..., 0]


class _OutcomeColumn:
    """A constraint callable: the ``index``-th outcome, a slack that is <= 0 when satisfied.

    A class rather than a lambda in a loop, which would capture the loop variable late.
    """

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return samples[..., self.index]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads, then restore the caller's setting.

    Small GP problems are fastest on one thread, and trials running beside the optimizer on the
    same machine make more threads collapse (measured 20-40x slower with oversubscription).
    """
    previous = torch.get_num_threads()
    if n > 0 and n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)

