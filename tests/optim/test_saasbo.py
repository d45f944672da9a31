"""SAASBO on small budgets: the model finds the few dimensions that matter, `auto` switches to it
above SAASBO_MIN_DIM dimensions, and what it cannot do is refused with the field named.

NUTS budgets are cut to a few dozen steps so each fit compiles and runs in seconds; the defaults
are measured by benchmarks/bench_engine.py --problems branin30.
"""

from pathlib import Path

import numpy as np
import pytest

from prefect_hpo import Experiment, SpecError
from prefect_hpo.optim.suggesters.auto import AutoSuggester
from prefect_hpo.optim.suggesters.base import Observations
from prefect_hpo.optim.suggesters.saasbo import SAASBO_MIN_DIM, SAASBO_N_INITIAL, SAASBOSuggester

pytestmark = pytest.mark.slow

QUICK_NUTS = {"warmup_steps": 32, "num_samples": 32, "thinning": 4, "num_restarts": 2, "raw_samples": 64}


def unit_space(d):
    return [{"name": f"x{i}", "type": "range", "bounds": [0.0, 1.0]} for i in range(d)]


def sparse_objective(p):
    """Only x2 and x11 matter, out of however many there are."""
    return (p["x2"] - 0.25) ** 2 + 2.0 * (p["x11"] - 0.7) ** 2


def test_the_saas_model_switches_on_the_dimensions_that_matter():
    exp = Experiment("saas-fit", unit_space(20), objectives={"y": "minimize"}, algorithm="sobol", seed=3)
    for _ in range(24):
        t = exp.ask()
        exp.tell(t.index, sparse_objective(t.params))
    suggester = SAASBOSuggester(exp.encoder, seed=0, **QUICK_NUTS)
    model = suggester.fit(exp.observations(), seed=0)
    lengthscales = model.median_lengthscale.detach().numpy()
    active = lengthscales[[2, 11]]
    inactive = np.delete(lengthscales, [2, 11])
    assert active.max() < np.median(inactive), lengthscales
    assert model.num_mcmc_samples == QUICK_NUTS["num_samples"] // QUICK_NUTS["thinning"]


def test_saasbo_hands_over_from_its_initial_design_and_checkpoints_its_position():
    # The model's quality is measured in benchmarks/bench_engine.py (branin30); distinct batches
    # with pending trials, bounds and linear constraints in tests/optim/test_suggesters.py.
    exp = Experiment(
        "saas-run", unit_space(20), objectives={"y": "minimize"}, algorithm="saasbo", seed=0,
        algorithm_options={"n_initial": 6, **QUICK_NUTS},
    )
    for _ in range(7):
        t = exp.ask()
        exp.tell(t.index, sparse_objective(t.params))
    assert [t.suggester for t in exp.trials] == ["sobol"] * 6 + ["saasbo"]
    assert all(0.0 <= v <= 1.0 for v in exp.trials[-1].params.values())
    restored = Experiment.from_json(exp.to_json())
    assert restored.suggester.state_dict() == exp.suggester.state_dict() == {"initial": {"position": 6}}


def test_auto_uses_saasbo_from_the_stated_dimension_on():
    def auto(d, objectives=None, **kw):
        return Experiment(
            "auto-dim", unit_space(d), objectives=objectives or {"y": "minimize"}, algorithm="auto", seed=0, **kw
        ).suggester

    low, high = auto(SAASBO_MIN_DIM - 1), auto(SAASBO_MIN_DIM)
    assert isinstance(low, AutoSuggester) and low.saasbo is None and low.n_initial == 2 * (SAASBO_MIN_DIM - 1)
    assert high.saasbo is not None and high.n_initial == SAASBO_N_INITIAL


@pytest.mark.slow
@pytest.mark.e2e  # ~20-60 s of SAAS fits on CI's 2 cores: kept out of `make test`, run by CI
def test_auto_in_high_dimensions_hands_over_to_saasbo_after_its_initial_design():
    exp = Experiment(
        "auto-saas", unit_space(SAASBO_MIN_DIM), objectives={"y": "minimize"}, algorithm="auto", seed=0,
        algorithm_options={"n_initial": 5},
    )
    exp.suggester.saasbo.nuts_options.update(warmup_steps=32, num_samples=32, thinning=4)
    for _ in range(6):
        t = exp.ask()
        exp.tell(t.index, sparse_objective(t.params))
    assert [t.suggester for t in exp.trials] == ["sobol"] * 5 + ["saasbo"]


def test_auto_in_high_dimensions_keeps_the_gp_for_several_objectives():
    exp = Experiment(
        "auto-saas-moo", unit_space(SAASBO_MIN_DIM), objectives={"a": "minimize", "b": "minimize"},
        algorithm="auto", seed=0,
        algorithm_options={"n_initial": 4, "num_restarts": 1, "raw_samples": 32, "acqf_maxiter": 20},
    )
    for _ in range(5):
        t = exp.ask()
        exp.tell(t.index, {"a": sparse_objective(t.params), "b": t.params["x0"]})
    assert [t.suggester for t in exp.trials] == ["sobol"] * 4 + ["gp"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"thinning": 64, "num_samples": 32}, "algorithm_options.thinning"),
        ({"warmup_steps": 0}, "algorithm_options.warmup_steps"),
        ({"n_initial": 1.5}, "algorithm_options.n_initial"),
        ({"max_tree_depth": True}, "algorithm_options.max_tree_depth"),
    ],
)
def test_bad_nuts_options_name_the_field(options, field):
    with pytest.raises(SpecError, match=field):
        Experiment("bad", unit_space(3), objectives={"y": "minimize"}, algorithm="saasbo", algorithm_options=options)


def test_saasbo_refuses_several_objectives_and_outcome_constraints():
    with pytest.raises(SpecError, match="saasbo.*single objective"):
        Experiment("moo", unit_space(3), objectives={"a": "minimize", "b": "maximize"}, algorithm="saasbo")
    with pytest.raises(SpecError, match="saasbo.*outcome constraints.*latency_ms <= 20"):
        Experiment(
            "constrained", unit_space(3), objectives={"a": "minimize"}, algorithm="saasbo",
            outcome_constraints=["latency_ms <= 20"],
        )


def test_a_failed_fit_falls_back_to_sobol_with_a_logged_reason(caplog, monkeypatch):
    exp = Experiment(
        "saas-nan", unit_space(3), objectives={"y": "minimize"}, algorithm="saasbo", seed=0,
        algorithm_options={"n_initial": 2, **QUICK_NUTS},
    )
    for value in (1.0, 2.0):
        t = exp.ask()
        exp.tell(t.index, value)

    def broken_fit(observations: Observations, seed: int = 0):
        raise RuntimeError("NUTS diverged")

    # the one stand-in here: a sampler failure cannot be provoked reliably with real data
    monkeypatch.setattr(exp.suggester, "fit", broken_fit)
    with caplog.at_level("WARNING"):
        t = exp.ask()
    assert t.suggester == "sobol"
    assert "NUTS diverged" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts the process's memory mappings (Linux)")
@pytest.mark.slow
@pytest.mark.e2e  # ~20-60 s of SAAS fits on CI's 2 cores: kept out of `make test`, run by CI
def test_repeated_fits_do_not_pile_up_compiled_programs():
    """Each fit compiles a new NUTS program (the data are constants in it); keeping them all cost
    about 1,000 memory mappings per fit and killed a 60-suggestion run. Three fits of growing data
    must leave the mapping count flat."""
    exp = Experiment("saas-leak", unit_space(20), objectives={"y": "minimize"}, algorithm="sobol", seed=5)
    suggester = SAASBOSuggester(exp.encoder, seed=0, **{**QUICK_NUTS, "warmup_steps": 8, "num_samples": 8})
    counts = []
    for _ in range(3):
        for _ in range(2):
            t = exp.ask()
            exp.tell(t.index, sparse_objective(t.params))
        suggester.fit(exp.observations(), seed=0)
        counts.append(len(Path("/proc/self/maps").read_text().splitlines()))
    assert counts[2] - counts[1] < 300, counts
