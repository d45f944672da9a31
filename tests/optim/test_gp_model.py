"""The surrogate: right model per space, warm starts that stick, and checkpointable state."""

from __future__ import annotations

import pytest
import torch

from prefect_hpo import SearchSpace, SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.gp_model import SurrogateFitter

SPACE = SearchSpace.parse([{"name": f"x{i}", "type": "range", "bounds": [0.0, 1.0]} for i in range(3)])


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return X, ((X - 0.3) ** 2).sum(-1, keepdim=True)


def test_fit_interpolates_a_smooth_function() -> None:
    X, Y = _data(30)
    model = SurrogateFitter(SpaceEncoder(SPACE)).fit(X, Y)
    Xt, Yt = _data(50, seed=1)
    with torch.no_grad():
        error = (model.posterior(Xt).mean - Yt).abs().max().item()
    assert error < 0.05 * Y.std().item() * 10  # a GP on 30 points of a quadratic is accurate


def test_state_round_trip_and_warm_start() -> None:
    fitter = SurrogateFitter(SpaceEncoder(SPACE), refit_every=1000)
    X, Y = _data(20)
    fitter.fit(X, Y)
    state = fitter.state_dict()
    assert state["fits"] == 1 and "likelihood.noise_covar.raw_noise" in state["hyperparameters"]
    restored = SurrogateFitter(SpaceEncoder(SPACE), refit_every=1000)
    restored.load_state_dict(state)
    X2, Y2 = _data(21)
    a, b = fitter.fit(X2, Y2), restored.fit(X2, Y2)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_categorical_dims_get_a_categorical_kernel() -> None:
    space = SearchSpace.parse(
        [{"name": "a", "type": "range", "bounds": [0.0, 1.0]}, {"name": "c", "type": "choice", "values": ["p", "q", "r"]}]
    )
    fitter = SurrogateFitter(SpaceEncoder(space))
    X = torch.tensor([[0.1, 0.0], [0.5, 1.0], [0.9, 2.0], [0.3, 1.0], [0.7, 0.0]], dtype=torch.float64)
    model = fitter.fit(X, X[:, :1] + X[:, 1:])
    kernels = {type(m).__name__ for m in model.covar_module.modules()}
    assert "CategoricalKernel" in kernels and "MaternKernel" in kernels


@pytest.mark.parametrize("options", [{"kernel": "linear"}, {"noise_floor": 0.0}])
def test_bad_options_are_spec_errors(options: dict) -> None:
    with pytest.raises(SpecError):
        SurrogateFitter(SpaceEncoder(SPACE), **options)
