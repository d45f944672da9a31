"""CachedLogExpectedImprovement must be BoTorch's LogExpectedImprovement, only faster."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.analytic import LogExpectedImprovement

from prefect_hpo import SearchSpace
from prefect_hpo.optim.acquisition import CachedLogExpectedImprovement
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.gp_model import SurrogateFitter

SPACES = {
    "continuous": [{"name": f"x{i}", "type": "range", "bounds": [0.0, 1.0]} for i in range(4)],
    "mixed": [
        {"name": "a", "type": "range", "bounds": [0.0, 1.0]},
        {"name": "n", "type": "range", "bounds": [1, 6]},
        {"name": "c", "type": "choice", "values": ["x", "y", "z"]},
    ],
    "categorical_only": [
        {"name": "c", "type": "choice", "values": ["x", "y", "z"]},
        {"name": "d", "type": "choice", "values": [1, 2, 3, 4]},
    ],
}


def _fitted_model(space_name: str, kernel: str, n: int = 25):
    encoder = SpaceEncoder(SearchSpace.parse(SPACES[space_name]))
    generator = torch.Generator().manual_seed(0)
    U = torch.rand(n, encoder.dim, generator=generator, dtype=torch.float64)
    X = torch.as_tensor(encoder.from_uniform(U.numpy()))
    Y = (3 * X).sin().sum(-1, keepdim=True) + 0.01 * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    model = SurrogateFitter(encoder, kernel=kernel).fit(X, Y * 40 + 7)  # non-trivial standardization
    test = torch.as_tensor(encoder.from_uniform(torch.rand(17, encoder.dim, generator=generator, dtype=torch.float64).numpy()))
    return model, X, test.unsqueeze(-2)


@pytest.mark.parametrize("kernel", ["matern", "dim_scaled"])
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_values_and_gradients_match_botorch(space_name: str, kernel: str) -> None:
    model, train_X, test = _fitted_model(space_name, kernel)
    fast = CachedLogExpectedImprovement(model)
    with torch.no_grad():
        assert torch.allclose(fast.best_f, model.posterior(train_X).mean.max(), rtol=1e-9, atol=1e-9)
    reference = LogExpectedImprovement(model, best_f=fast.best_f)
    test = test.clone().requires_grad_(True)
    ref_values, fast_values = reference(test), fast(test)
    assert torch.allclose(fast_values, ref_values, rtol=1e-6, atol=1e-8)
    if space_name == "categorical_only":
        return  # no continuous input, no gradient (such spaces are enumerated, not optimized)
    (ref_grad,) = torch.autograd.grad(ref_values.sum(), test)
    (fast_grad,) = torch.autograd.grad(fast_values.sum(), test)
    assert torch.allclose(fast_grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_explicit_best_f_is_used() -> None:
    model, _, test = _fitted_model("continuous", "matern")
    assert torch.allclose(
        CachedLogExpectedImprovement(model, best_f=1.5)(test), LogExpectedImprovement(model, best_f=1.5)(test), rtol=1e-6
    )


def test_forced_qlognei_suggests_valid_points_and_bad_choice_is_refused() -> None:
    from prefect_hpo import Experiment, SpecError

    space = [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}, {"name": "y", "type": "range", "bounds": [0.0, 1.0]}]
    options = {"acquisition": "qlognei", "n_initial": 3, "num_restarts": 2, "raw_samples": 64, "mc_samples": 32}
    exp = Experiment("noisy", space, algorithm="auto", seed=0, algorithm_options=options)
    for _ in range(5):
        trial = exp.ask()
        exp.tell(trial.index, (trial.params["x"] - 0.3) ** 2 + (trial.params["y"] - 0.6) ** 2)
    assert [t.suggester for t in exp.trials] == ["sobol"] * 3 + ["gp"] * 2
    with pytest.raises(SpecError, match="acquisition"):
        Experiment("bad", space, algorithm="gp", algorithm_options={"acquisition": "ucb"})
