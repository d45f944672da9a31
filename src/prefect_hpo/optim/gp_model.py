"""The GP surrogate: which BoTorch model fits which space, and warm-started fitting.

Inputs arrive already normalized by :mod:`prefect_hpo.optim.encoding` (numeric dims in the unit
cube, categorical dims as integer codes), outcomes are standardized by the model's
``Standardize`` transform, and everything is float64, as BoTorch recommends for GP work.

Warm start: the hyperparameters of the previous fit are the starting point of the next one.
Between two suggestions the data grows by a point or two, so the optimum of the marginal
likelihood barely moves and L-BFGS converges in a few iterations instead of dozens. To avoid
being trapped forever in a poor mode found early (a long lengthscale fitted to five Sobol
points, say), every ``refit_every``-th fit also starts from the prior's mode and the better
marginal likelihood wins.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior

from prefect_hpo.optim.encoding import SpaceEncoder

__all__ = ["SurrogateFitter"]


class SurrogateFitter:
    """Builds the right GP for the space and fits it, reusing the last fit's hyperparameters."""

    def __init__(
        self,
        encoder: SpaceEncoder,
        *,
        refit_every: int = 5,
        maxiter: int = 200,
        kernel: str = "rbf",
        noise_floor: float = 1e-6,
        noise_prior: str = "gamma",
        warm_start: bool = True,
        lengthscale_prior: tuple[str, float, float] = ("gamma", 3.0, 6.0),
        outputscale_prior: tuple[float, float] = (2.0, 0.15),
    ) -> None:
        self.lengthscale_prior = lengthscale_prior
        self.outputscale_prior = outputscale_prior
        self.warm_start = warm_start
        self.dim = encoder.dim
        self.kernel = kernel
        self.noise_floor = noise_floor
        self.noise_prior = noise_prior
        self.cat_dims = sorted(encoder.categorical_dims)
        self.kind = "mixed" if self.cat_dims else "single"
        self.refit_every = refit_every
        self.maxiter = maxiter
        self.fits = 0
        self.hyperparameters: dict[str, list[Any]] | None = None

    def _likelihood(self) -> GaussianLikelihood:
        prior = GammaPrior(1.1, 0.05) if self.noise_prior == "gamma" else LogNormalPrior(-4.0, 1.0)
        initial = max(self.noise_floor * 10, 1e-4)
        return GaussianLikelihood(
            noise_prior=prior, noise_constraint=GreaterThan(self.noise_floor, transform=None, initial_value=initial)
        )

    def build(self, X: torch.Tensor, Y: torch.Tensor) -> SingleTaskGP:
        outcome = Standardize(m=Y.shape[-1])
        if self.cat_dims:
            return MixedSingleTaskGP(
                X, Y, cat_dims=self.cat_dims, likelihood=self._likelihood(), outcome_transform=outcome
            )
        if self.kernel == "classic":
            covar = ScaleKernel(
                MaternKernel(nu=2.5, ard_num_dims=self.dim, lengthscale_prior=_prior(*self.lengthscale_prior)),
                outputscale_prior=GammaPrior(*self.outputscale_prior),
            )
        else:
            covar = get_covar_module_with_dim_scaled_prior(ard_num_dims=self.dim, use_rbf_kernel=self.kernel == "rbf")
        return SingleTaskGP(X, Y, covar_module=covar, likelihood=self._likelihood(), outcome_transform=outcome)

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> SingleTaskGP:
        candidates = []
        if self.hyperparameters is not None and self.warm_start:
            candidates.append(self._fit_one(X, Y, self.hyperparameters))
        if not candidates or self.fits % self.refit_every == 0:
            candidates.append(self._fit_one(X, Y, None))
        self.fits += 1
        model, _ = max(candidates, key=lambda pair: pair[1])
        self.hyperparameters = {k: v.detach().tolist() for k, v in model.named_parameters()}
        model.eval()
        return model

    def _fit_one(self, X: torch.Tensor, Y: torch.Tensor, start: dict[str, list[Any]] | None) -> tuple[SingleTaskGP, float]:
        model = self.build(X, Y)
        if start is not None:
            own = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in start.items():
                    if name in own and tuple(own[name].shape) == tuple(torch.as_tensor(value).shape):
                        own[name].copy_(torch.as_tensor(value, dtype=own[name].dtype))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.maxiter}})
        with torch.no_grad():
            model.train()
            output = model(*model.train_inputs)
            score = float(mll(output, model.train_targets).sum())
        return model, score

    def state_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "hyperparameters": self.hyperparameters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fits = int(state.get("fits", 0))
        self.hyperparameters = state.get("hyperparameters")


def _prior(kind: str, a: float, b: float):
    return GammaPrior(a, b) if kind == "gamma" else LogNormalPrior(a, b)
