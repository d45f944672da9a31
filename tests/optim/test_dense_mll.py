"""The dense marginal log likelihood: GPyTorch's value and gradients, by another route."""

from __future__ import annotations

import pytest
import torch
from gpytorch.mlls import ExactMarginalLogLikelihood

from prefect_hpo import SearchSpace
from prefect_hpo.optim.dense_mll import DenseExactMarginalLogLikelihood, gaussian_log_likelihood
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.gp_model import SurrogateFitter, exact_inference

NUMERIC = SearchSpace.parse([{"name": f"x{i}", "type": "range", "bounds": [0.0, 1.0]} for i in range(3)])
MIXED = SearchSpace.parse([
    {"name": "a", "type": "range", "bounds": [0.0, 1.0]},
    {"name": "c", "type": "choice", "values": ["p", "q", "r"]},
])


def _model(space: SearchSpace, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2 if space is MIXED else 3, generator=g, dtype=torch.float64)
    if space is MIXED:
        X[:, 1] = torch.randint(0, 3, (n,), generator=g).to(torch.float64)
    Y = torch.sin(6 * X[:, :1]) + X[:, 1:2] + 0.05 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = SurrogateFitter(SpaceEncoder(space)).build(X, Y)
    with torch.no_grad():  # away from the initial values, so that every gradient is non-trivial
        for _, parameter in model.named_parameters():
            parameter.add_(0.3 * torch.rand(parameter.shape, generator=g, dtype=torch.float64))  # a noise stays > 0
    model.train()
    return model


def _value_and_gradients(mll_class: type, model) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    mll = mll_class(model.likelihood, model)
    with exact_inference():
        value = mll(model(*model.train_inputs), model.train_targets).sum()
    value.backward()
    return float(value), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("space, n, seed", [(NUMERIC, 25, 0), (NUMERIC, 120, 1), (MIXED, 30, 2)])
def test_same_value_and_gradients_as_gpytorch(space: SearchSpace, n: int, seed: int) -> None:
    model = _model(space, n, seed)
    ours, our_grads = _value_and_gradients(DenseExactMarginalLogLikelihood, model)
    theirs, their_grads = _value_and_gradients(ExactMarginalLogLikelihood, model)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)
    assert our_grads.keys() == their_grads.keys()
    for name, grad in their_grads.items():
        assert torch.allclose(our_grads[name], grad, rtol=1e-6, atol=1e-9), (name, our_grads[name], grad)
        assert grad.abs().sum() > 0, name  # the comparison means something


def test_the_log_likelihood_is_the_normal_density_and_its_gradient_checks() -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    K = (A @ A.T + 6 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    r = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    expected = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), covariance_matrix=K).log_prob(r)
    assert float(gaussian_log_likelihood(K, r)) == pytest.approx(float(expected), rel=1e-12)
    # K enters symmetrically: check the gradient along symmetric directions
    assert torch.autograd.gradcheck(lambda S, v: gaussian_log_likelihood(S + S.transpose(-1, -2), v),
                                    (K.detach().div(2).requires_grad_(True), r))
