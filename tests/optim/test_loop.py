"""The loop API: ``optimize(evaluate, parameters, ...)``."""

import math

import pytest

from prefect_hpo import Experiment, NoCompletedTrialsError, OptimizeResult, SpecError, TrialError, TrialStatus, optimize

SPACE = [
    {"name": "x", "type": "range", "bounds": [-5.0, 5.0]},
    {"name": "k", "type": "range", "bounds": [1, 4]},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd"]},
]


def quadratic(p):
    return (p["x"] - 1.0) ** 2 + p["k"] + (0.5 if p["opt"] == "sgd" else 0.0)


def test_optimize_returns_the_best_params_values_and_experiment():
    result = optimize(quadratic, SPACE, objective="loss", trials=20, seed=0, algorithm="sobol")
    assert isinstance(result, OptimizeResult)
    best_params, best_values, exp = result
    assert isinstance(exp, Experiment) and exp.name == "optimize"
    assert len(exp.trials) == 20 and all(t.status is TrialStatus.COMPLETED for t in exp.trials)
    assert exp.objectives == {"loss": "minimize"}
    assert best_params == exp.best_trial.params and best_values == exp.best_trial.values
    assert best_values["loss"] == min(quadratic(t.params) for t in exp.trials)
    assert best_values["loss"] == pytest.approx(quadratic(best_params))
    assert best_params is not exp.best_trial.params, "the result does not alias the experiment's trial"


def test_optimize_with_the_default_algorithm_is_reproducible():
    a = optimize(quadratic, SPACE, trials=4, seed=3)
    b = optimize(quadratic, SPACE, trials=4, seed=3)
    assert a.experiment.algorithm == "auto"
    assert [t.params for t in a.experiment.trials] == [t.params for t in b.experiment.trials]
    assert a.best_values == b.best_values and "objective" in a.best_values


def test_optimize_maximizes():
    result = optimize(lambda p: -quadratic(p), SPACE, trials=20, seed=0, algorithm="sobol", minimize=False)
    exp = result.experiment
    assert exp.objectives == {"objective": "maximize"}
    assert result.best_values["objective"] == max(t.values["objective"] for t in exp.trials)
    assert result.best_values["objective"] > min(t.values["objective"] for t in exp.trials)


def test_optimize_accepts_a_dict_result_and_nni_spaces():
    nni = {"x": {"_type": "uniform", "_value": [-5, 5]}, "k": {"_type": "randint", "_value": [1, 5]}}
    result = optimize(lambda p: {"loss": (p["x"] - 1) ** 2 + p["k"]}, nni, objective="loss", trials=6, seed=0, algorithm="random")
    assert set(result.best_params) == {"x", "k"} and set(result.best_values) == {"loss"}


def test_an_exception_in_evaluate_fails_that_trial_and_the_loop_goes_on():
    calls = []

    def evaluate(p):
        calls.append(p)
        if p["opt"] == "sgd":
            raise RuntimeError(f"diverged at x={p['x']:.2f}")
        return quadratic(p)

    result = optimize(evaluate, SPACE, trials=12, seed=0, algorithm="sobol")
    exp = result.experiment
    assert len(calls) == 12 and len(exp.trials) == 12
    failed = [t for t in exp.trials if t.status is TrialStatus.FAILED]
    completed = [t for t in exp.trials if t.status is TrialStatus.COMPLETED]
    assert failed and completed, "the test needs both outcomes"
    assert {t.params["opt"] for t in failed} == {"sgd"} and {t.params["opt"] for t in completed} == {"adam"}
    for t in failed:
        assert t.failure_reason.startswith("RuntimeError: diverged at x=") and t.values is None
    assert result.best_params["opt"] == "adam"
    assert len(exp.observations().X) == len(completed)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_result_fails_that_trial_and_the_loop_goes_on(bad):
    def evaluate(p):
        return bad if p["x"] > 0 else quadratic(p)

    result = optimize(evaluate, SPACE, trials=12, seed=1, algorithm="random")
    exp = result.experiment
    failed = [t for t in exp.trials if t.status is TrialStatus.FAILED]
    assert failed and all(t.params["x"] > 0 for t in failed)
    assert all("objective 'objective'" in t.failure_reason for t in failed)
    assert len(failed) + len(exp.observations().X) == 12
    assert math.isfinite(result.best_values["objective"]) and result.best_params["x"] <= 0


def test_optimize_with_every_trial_failing_says_so():
    def evaluate(p):
        raise ValueError("broken")

    with pytest.raises(NoCompletedTrialsError):
        optimize(evaluate, SPACE, trials=3, seed=0, algorithm="random")


def test_optimize_passes_constraints_and_algorithm_options():
    space = [{"name": "a", "type": "range", "bounds": [0, 3]}, {"name": "b", "type": "range", "bounds": [0, 3]}]
    result = optimize(
        lambda p: -(p["a"] + p["b"]),
        space,
        trials=6,
        seed=0,
        algorithm="grid",
        parameter_constraints=["a + b <= 2"],
        algorithm_options={"shuffle": False},
        name="constrained",
    )
    exp = result.experiment
    assert exp.name == "constrained"
    assert [(t.params["a"], t.params["b"]) for t in exp.trials] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    assert result.best_values["objective"] == -2


@pytest.mark.parametrize("trials", [0, -3, 2.5, True])
def test_optimize_refuses_a_bad_trial_count(trials):
    with pytest.raises(SpecError, match="trials"):
        optimize(quadratic, SPACE, trials=trials)


def test_a_result_that_is_not_a_number_is_a_caller_bug_not_a_failed_trial():
    with pytest.raises(TrialError, match="must be a number"):
        optimize(lambda p: "1.5", SPACE, trials=2, seed=0, algorithm="random")


@pytest.mark.parametrize("algorithm", ["auto", "gp", "grid"])  # random and sobol draw with replacement
def test_a_budget_larger_than_a_finite_space_returns_the_best_found(algorithm: str) -> None:
    # Ax's rule: integer bounds make an int range, so [0, 1] has exactly two points
    space = [{"name": "k", "type": "range", "bounds": [0, 1]}, {"name": "c", "type": "choice", "values": ["a", "b"]}]
    result = optimize(lambda p: p["k"] + (p["c"] == "b"), space, trials=10, seed=0, algorithm=algorithm)
    best_params, best_values, exp = result  # still unpacks as three values
    assert best_params == {"k": 0, "c": "a"} and best_values == {"objective": 0}
    assert result.exhausted and result.exhausted_reason
    assert 4 <= len(exp.trials) < 10
    assert {(t.params["k"], t.params["c"]) for t in exp.trials} == {(0, "a"), (0, "b"), (1, "a"), (1, "b")}


def test_a_result_within_budget_is_not_marked_exhausted() -> None:
    result = optimize(quadratic, SPACE, trials=3, seed=0, algorithm="sobol")
    assert not result.exhausted and result.exhausted_reason is None
