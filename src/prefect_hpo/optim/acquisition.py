"""A faster analytic LogEI: BoTorch's formula on a posterior whose training solves are cached.

``LogExpectedImprovement`` asks the model for a full posterior at every evaluation; through
GPyTorch's lazy-tensor machinery that costs about 3 ms per call here even for 60 training
points, and optimizing the acquisition takes ~100 calls. The posterior of an exact GP only needs
``k(x, X)``, the Cholesky factor of ``K(X, X) + noise`` and ``alpha = (K + noise)^-1 (y - m)``;
the last two do not depend on ``x``, so we compute them once per suggestion. Everything else
(the numerically careful ``log EI`` of Ament et al., batching, the q=1 checks) is BoTorch's own
``LogExpectedImprovement``; only ``_mean_and_sigma`` is replaced, and a test checks that both
give the same values and gradients.
"""

from __future__ import annotations

import torch
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.models import SingleTaskGP
from linear_operator import LinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky

__all__ = ["CachedLogExpectedImprovement"]


class CachedLogExpectedImprovement(LogExpectedImprovement):
    """``LogExpectedImprovement`` for an exact single-output GP without input transforms."""

    def __init__(self, model: SingleTaskGP, best_f: float | torch.Tensor | None = None) -> None:
        """``best_f=None`` uses the best posterior mean at the training points (see ``incumbent``)."""
        super().__init__(model=model, best_f=0.0 if best_f is None else best_f)
        if getattr(model, "input_transform", None) is not None or model.num_outputs != 1:
            raise ValueError("CachedLogExpectedImprovement needs a single-output GP without input transform")
        model.eval()
        with torch.no_grad():
            train_X = model.train_inputs[0]
            train_y = model.train_targets  # standardized when the model has Standardize
            noise = model.likelihood.noise.expand(train_y.shape)
            K = model.covar_module(train_X).to_dense() + torch.diag_embed(noise)
            self._L = psd_safe_cholesky(K)
            self._prior_mean = model.mean_module(train_X)
            residual = (train_y - self._prior_mean).unsqueeze(-1)
            self._alpha = torch.cholesky_solve(residual, self._L).squeeze(-1)
        self._train_X = train_X
        covar = model.covar_module
        # ``forward`` skips GPyTorch's call machinery (about half the cost of an evaluation) but
        # also skips ``active_dims``; use it only where no kernel it bypasses selects dims.
        bypassed = [covar, getattr(covar, "base_kernel", None)]
        self._use_forward = all(k is None or k.active_dims is None for k in bypassed)
        # Posterior mean at the training inputs without another solve:
        # (K + N) alpha = y - m  =>  m + K alpha = y - N alpha.
        self._train_mean_std = train_y - noise * self._alpha
        transform = getattr(model, "outcome_transform", None)
        if transform is not None:
            self._y_mean = transform.means.squeeze()
            self._y_std = transform.stdvs.squeeze()
        else:
            self._y_mean = torch.zeros((), dtype=train_X.dtype)
            self._y_std = torch.ones((), dtype=train_X.dtype)
        if best_f is None:
            self.best_f = self.incumbent()

    def incumbent(self) -> torch.Tensor:
        """The best posterior mean at an observed point, in the model's output units.

        With noisy observations the best *observed* value is biased upwards (the luckiest draw);
        the posterior mean is the value the model believes, and equals the observation when the
        fitted noise is negligible.
        """
        return (self._y_mean + self._y_std * self._train_mean_std).max()

    def _mean_and_sigma(
        self, X: torch.Tensor, compute_sigma: bool = True, min_var: float = 1e-12
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = X.squeeze(-2)  # (b, d): q == 1 is enforced by the forward's decorator
        k_star = self._kernel(x, self._train_X)  # (b, n)
        mean_std = self.model.mean_module(x) + k_star @ self._alpha
        mean = (self._y_mean + self._y_std * mean_std).unsqueeze(-1)
        if not compute_sigma:
            return mean, None
        v = torch.linalg.solve_triangular(self._L, k_star.transpose(-1, -2), upper=False)  # (n, b)
        prior_var = self._kernel(x, x, diag=True)
        var = (prior_var - (v * v).sum(dim=-2)).clamp_min(0.0) * self._y_std**2
        sigma = var.clamp_min(min_var).sqrt().unsqueeze(-1)
        return mean, sigma

    def _kernel(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False) -> torch.Tensor:
        covar = self.model.covar_module
        value = covar.forward(x1, x2, diag=diag) if self._use_forward else covar(x1, x2, diag=diag)
        return _dense(value)


def _dense(value: torch.Tensor | LinearOperator) -> torch.Tensor:
    return value.to_dense() if isinstance(value, LinearOperator) else value
