"""SAASBO: Bayesian optimization for spaces where only a few of many parameters matter.

A GP with one lengthscale per dimension needs data in proportion to the dimension before its
lengthscales mean anything; at 30 parameters and 30 trials the MAP fit of the ``gp`` suggester
is mostly guessing. The SAAS prior (Eriksson & Jankowiak, UAI 2021) puts a half-Cauchy prior with
a small global scale on the inverse squared lengthscales, so every dimension starts "off" and only
those the data argue for are switched on. That posterior is sharply multimodal, so the
hyperparameters are sampled with NUTS rather than optimized, and the acquisition function
(qLogNEI, with in-flight trials as ``X_pending``) averages over the samples. Model, sampler and
acquisition are BoTorch's (``SaasFullyBayesianSingleTaskGP``, ``fit_fully_bayesian_model_nuts``,
which runs NumPyro on JAX); the acquisition optimizer is the ``gp`` suggester's.

When to use it: about 20 or more parameters (:data:`SAASBO_MIN_DIM`) of which a handful are
expected to matter, trials that take minutes, and budgets of tens to a few hundred trials.

Cost, measured on this project's 2-core CPU machine with the defaults (256 warm-up steps, 128
samples, every 16th kept), 30 parameters: NUTS takes about 6 s per suggestion once compiled, but
BoTorch's NUTS program holds the data as constants, so JAX recompiles it whenever the number of
observations changes, i.e. on nearly every suggestion: 20-25 s per suggestion in practice, against
well under a second for ``gp``. Nothing is kept between suggestions (no warm start), so a resumed
experiment needs nothing but the Sobol position.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from typing import Annotated, Any

import numpy as np
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.exceptions import BotorchError
from botorch.fit import fit_fully_bayesian_model_nuts
from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.sampling import SobolQMCNormalSampler
from linear_operator.utils.errors import NanError, NotPSDError
from pydantic import Field

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.suggesters.base import Count, Observations, StrictInt, Suggester, SuggesterOptions
from prefect_hpo.optim.suggesters.gp import DTYPE, GPSuggester

__all__ = ["SAASBO_MIN_DIM", "SAASBO_N_INITIAL", "SAASBOSuggester", "saasbo_available"]

logger = logging.getLogger(__name__)

SAASBO_MIN_DIM = 20
"""Searched dimensions from which ``auto`` uses ``saasbo`` instead of ``gp``.

Below about 20 dimensions the ``gp`` suggester's MAP fit has enough data per dimension at HPO
budgets and costs a fraction of a second; from about 20 on, with tens of trials, it cannot tell
the few parameters that matter from the many that do not, which is what the SAAS prior is for
(the SAASBO paper's problems start at 25 dimensions, BoTorch's tutorial uses 30)."""

SAASBO_N_INITIAL = 10
"""Sobol trials before the first SAAS model: the SAASBO paper's choice whatever the dimension.
The usual ``2 * d`` would spend 60 trials of a 30-dimensional space before the model that is meant
to need few points has any say."""



def saasbo_available() -> bool:
    """Whether JAX and NumPyro, which BoTorch's NUTS runs on, are importable."""
    return find_spec("jax") is not None and find_spec("numpyro") is not None


def _release_compiled_programs() -> None:
    """Drop JAX's compiled programs after each fit.

    BoTorch's NUTS program holds the data as constants, so every fit compiles a new one, and JAX
    keeps them all: measured here, each fit left about 1,000 memory mappings and 200 MB behind, so
    a long experiment exhausted the kernel's 65,530 mappings after about 60 suggestions and the
    process died (LLVM "Cannot allocate memory", then a segfault). A cleared cache costs nothing,
    as the next fit has a different data size and compiles anew anyway.
    """
    import jax

    jax.clear_caches()


class SAASBOOptions(SuggesterOptions):
    """``saasbo``'s options: NUTS (ranges checked by the suggester, naming each), then the
    acquisition optimizer as for ``gp``."""

    n_initial: StrictInt = SAASBO_N_INITIAL
    warmup_steps: StrictInt = 256
    num_samples: StrictInt = 128
    thinning: StrictInt = 16
    max_tree_depth: StrictInt = 6
    num_restarts: Count = 8
    raw_samples: Count = 512
    acqf_maxiter: Count = 200
    mc_samples: Count = 128
    threads: Annotated[StrictInt, Field(ge=0)] | None = None
    optimizer_options: dict[str, Any] | None = None
    mixed_optimizer_options: dict[str, Any] | None = None


class SAASBOSuggester(GPSuggester):
    """SAASBO for one objective without outcome constraints; see the module docstring for its cost.

    The first ``n_initial`` (default 10) completed trials come from a scrambled Sobol sequence.
    A failure of the model falls back to Sobol for that suggestion, with the reason logged.

    Options (``algorithm_options``): ``n_initial``; ``warmup_steps``, ``num_samples``,
    ``thinning`` and ``max_tree_depth`` for NUTS (``num_samples // thinning`` posterior samples
    are kept; BoTorch's defaults are 512/256/16, the ones here halve the sampling time and find the
    same active dimensions on the benchmark); and the ``gp`` suggester's acquisition-optimizer
    settings. Unordered choices enter the SAAS GP as their integer codes (it has no categorical
    kernel); the optimizer still searches the categories themselves.
    """

    name = "saasbo"
    Options = SAASBOOptions
    multi_objective = False
    outcome_constraints = False
    model_errors = (BotorchError, NotPSDError, NanError, RuntimeError, ValueError, FloatingPointError)

    def __init__(
        self,
        encoder: SpaceEncoder,
        *,
        seed: int,
        fallback: Suggester | None = None,
        n_initial: int = SAASBO_N_INITIAL,
        warmup_steps: int = 256,
        num_samples: int = 128,
        thinning: int = 16,
        max_tree_depth: int = 6,
        num_restarts: int = 8,
        raw_samples: int = 512,
        acqf_maxiter: int = 200,
        mc_samples: int = 128,
        threads: int | None = None,
        optimizer_options: dict[str, Any] | None = None,
        mixed_optimizer_options: dict[str, Any] | None = None,
    ) -> None:
        for option, value, low in (
            ("n_initial", n_initial, 2), ("warmup_steps", warmup_steps, 1), ("num_samples", num_samples, 1),
            ("thinning", thinning, 1), ("max_tree_depth", max_tree_depth, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"algorithm_options.{option}: must be an integer >= {low}, got {value!r}")
        if thinning > num_samples:
            raise SpecError(
                f"algorithm_options.thinning: {thinning} keeps no sample of num_samples={num_samples}; "
                "it must be at most num_samples"
            )
        if not saasbo_available():
            raise SpecError(
                "algorithm 'saasbo': needs jax and numpyro (BoTorch runs NUTS in NumPyro on JAX); "
                "reinstall prefect-hpo with its dependencies, or `pip install 'botorch[fully-bayesian]'`"
            )
        super().__init__(
            encoder,
            seed=seed,
            fallback=fallback,
            min_observations=n_initial,
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            acqf_maxiter=acqf_maxiter,
            mc_samples=mc_samples,
            threads=threads,
            acquisition="qlognei",
            optimizer_options=optimizer_options,
            mixed_optimizer_options=mixed_optimizer_options,
        )
        self.nuts_options = {
            "warmup_steps": warmup_steps, "num_samples": num_samples, "thinning": thinning, "max_tree_depth": max_tree_depth,
        }

    def _suggest_with_model(self, obs: Observations, n: int) -> np.ndarray:
        # GPSuggester.suggest seeded torch for this suggestion: NUTS takes its seed from there
        seed = int(torch.randint(2**31 - 1, (1,)).item())
        return self._suggest_with_saas(obs, n, seed)

    def state_dict(self) -> dict[str, Any]:
        # NUTS starts afresh every time; only the Sobol position must survive a checkpoint, or a
        # resumed experiment would replay the initial design.
        return {"initial": self.fallback.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fallback.load_state_dict(state.get("initial", {}))

    def fit(self, observations: Observations, seed: int = 0) -> SaasFullyBayesianSingleTaskGP:
        """The SAAS GP on the observations, hyperparameters sampled by NUTS (same seed, same model)."""
        train_X = torch.tensor(observations.X, dtype=DTYPE)
        model = SaasFullyBayesianSingleTaskGP(
            train_X,
            torch.tensor(observations.Y, dtype=DTYPE),
            outcome_transform=Standardize(m=1),
            input_transform=Normalize(d=train_X.shape[-1], bounds=torch.as_tensor(self.encoder.bounds, dtype=DTYPE)),
        )
        try:
            fit_fully_bayesian_model_nuts(model, disable_progbar=True, seed=seed, **self.nuts_options)
        finally:
            _release_compiled_programs()
        return model

    def _suggest_with_saas(self, obs: Observations, n: int, seed: int) -> np.ndarray:
        model = self.fit(obs, seed)
        pending = torch.tensor(obs.X_pending, dtype=DTYPE) if len(obs.X_pending) else None
        acqf = qLogNoisyExpectedImprovement(
            model,
            X_baseline=torch.tensor(obs.X, dtype=DTYPE),
            X_pending=pending,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples])),
            prune_baseline=True,
            cache_root=False,
        )
        return self._optimize(acqf, obs, n).detach().cpu().numpy()
