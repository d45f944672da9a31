"""Several objectives: Pareto front, reference point, hypervolume, and the gp/auto suggesters."""

import json
import math

import numpy as np
import pytest
import torch
from botorch.test_functions.multi_objective import BraninCurrin
from botorch.utils.multi_objective.hypervolume import Hypervolume

from prefect_hpo import Experiment, NoCompletedTrialsError, SerializationError, SpecError, TrialStatus
from prefect_hpo.optim import pareto

UNIT = [{"name": "x0", "type": "range", "bounds": [0.0, 1.0]}, {"name": "x1", "type": "range", "bounds": [0.0, 1.0]}]
FAST = {"num_restarts": 2, "raw_samples": 64, "mc_samples": 32}


def experiment(objectives, **kwargs):
    return Experiment("mo", UNIT, objectives=objectives, algorithm="random", seed=0, **kwargs)


def tell_all(exp, rows):
    """One completed trial per row of values; returns the trials."""
    trials = []
    for values in rows:
        trial = exp.attach_trial({"x0": 0.5, "x1": 0.5})
        exp.tell(trial.index, values)
        trials.append(trial)
    return trials


MIN2 = {"f1": "minimize", "f2": "minimize"}
# A staircase front (1,3) (2,2) (3,1) plus points it dominates.
STAIRCASE = [
    {"f1": 2.0, "f2": 2.0},
    {"f1": 3.0, "f2": 3.0},  # dominated by (2, 2)
    {"f1": 3.0, "f2": 1.0},
    {"f1": 1.0, "f2": 3.0},
    {"f1": 2.0, "f2": 2.5},  # equal on f1, worse on f2: dominated by (2, 2)
]


# ---- Pareto front ------------------------------------------------------------------------------


def test_pareto_front_minimizing_both_excludes_dominated_points_and_sorts_by_the_first_objective():
    exp = experiment(MIN2)
    trials = tell_all(exp, STAIRCASE)
    front = exp.pareto_front()
    assert [t.index for t in front] == [trials[3].index, trials[0].index, trials[2].index]
    assert [t.values for t in front] == [{"f1": 1.0, "f2": 3.0}, {"f1": 2.0, "f2": 2.0}, {"f1": 3.0, "f2": 1.0}]
    assert all(t.params == {"x0": 0.5, "x1": 0.5} for t in front)


def test_pareto_front_maximizing_both_is_the_mirror_image():
    exp = experiment({"f1": "maximize", "f2": "maximize"})
    tell_all(exp, [{k: -v for k, v in row.items()} for row in STAIRCASE])
    # best first on f1, which is maximized: -1 before -2 before -3
    assert [t.values for t in exp.pareto_front()] == [
        {"f1": -1.0, "f2": -3.0}, {"f1": -2.0, "f2": -2.0}, {"f1": -3.0, "f2": -1.0}
    ]


def test_pareto_front_with_mixed_directions():
    exp = experiment({"loss": "minimize", "acc": "maximize"})
    a, b, c, d = tell_all(exp, [
        {"loss": 0.1, "acc": 0.80},
        {"loss": 0.2, "acc": 0.90},
        {"loss": 0.3, "acc": 0.85},  # worse on both than b
        {"loss": 0.05, "acc": 0.70},
    ])
    assert [t.index for t in exp.pareto_front()] == [d.index, a.index, b.index]


def test_pareto_front_keeps_every_trial_with_the_same_values():
    exp = experiment(MIN2)
    a, b, c = tell_all(exp, [{"f1": 1.0, "f2": 1.0}, {"f1": 1.0, "f2": 1.0}, {"f1": 1.0, "f2": 1.5}])
    assert [t.index for t in exp.pareto_front()] == [a.index, b.index]


def test_pareto_front_only_holds_completed_trials():
    exp = experiment(MIN2)
    good, = tell_all(exp, [{"f1": 2.0, "f2": 2.0}])
    stopped, failed, pending = (exp.attach_trial({"x0": 0.1, "x1": 0.1}) for _ in range(3))
    exp.mark_running(stopped.index)
    exp.stop_early(stopped.index, {"f1": 0.0, "f2": 0.0}, "asha: cut short")  # looks best, ran short
    exp.tell(failed.index, failed="boom")
    assert exp.pareto_front() == [good]
    assert pending.status is TrialStatus.PENDING
    assert experiment(MIN2).pareto_front() == []


def test_pareto_front_with_one_objective_is_the_best_trial_and_its_ties():
    exp = experiment({"loss": "minimize"})
    a, b, c = tell_all(exp, [{"loss": 2.0}, {"loss": 1.0}, {"loss": 1.0}])
    assert exp.pareto_front() == [b, c]
    assert exp.best_trial is b


def test_best_trial_points_to_the_pareto_front():
    exp = experiment(MIN2)
    tell_all(exp, STAIRCASE)
    with pytest.raises(SpecError, match=r"2 objectives.*pareto_front\(\)"):
        exp.best_trial


# ---- hypervolume -----------------------------------------------------------------------------------


def test_hypervolume_of_a_staircase_by_hand():
    exp = experiment({"f1": {"direction": "minimize", "threshold": 4.0}, "f2": {"direction": "minimize", "threshold": 4.0}})
    tell_all(exp, STAIRCASE)
    # rectangles to (4, 4): [1,4]x[3,4] + [2,4]x[2,3] + [3,4]x[1,2] = 3 + 2 + 1
    assert exp.hypervolume() == pytest.approx(6.0)
    assert exp.hypervolume({"f1": 3.5, "f2": 5.0}) == pytest.approx(2.5 * 2 + 1.5 * 1 + 0.5 * 1)


def test_hypervolume_maximizing_and_mixed_directions():
    maxi = experiment({"f1": "maximize", "f2": "maximize"})
    tell_all(maxi, [{k: -v for k, v in row.items()} for row in STAIRCASE])
    assert maxi.hypervolume({"f1": -4.0, "f2": -4.0}) == pytest.approx(6.0)
    mixed = experiment({"f1": "minimize", "f2": "maximize"})
    tell_all(mixed, [{"f1": r["f1"], "f2": -r["f2"]} for r in STAIRCASE])
    assert mixed.hypervolume({"f1": 4.0, "f2": -4.0}) == pytest.approx(6.0)


def test_points_beyond_the_reference_point_add_nothing():
    exp = experiment(MIN2)
    tell_all(exp, [{"f1": 1.0, "f2": 1.0}, {"f1": 0.5, "f2": 5.0}])
    assert exp.hypervolume({"f1": 2.0, "f2": 2.0}) == pytest.approx(1.0)
    assert exp.hypervolume({"f1": 0.8, "f2": 10.0}) == pytest.approx(0.3 * 5.0)
    assert exp.hypervolume({"f1": 0.1, "f2": 0.1}) == 0.0
    with pytest.raises(SpecError, match="one value for each of"):
        exp.hypervolume({"f1": 1.0})


def test_hypervolume_agrees_with_botorch_on_random_points():
    rng = np.random.default_rng(0)
    Y = rng.random((40, 3))
    exp = experiment({"a": "maximize", "b": "maximize", "c": "maximize"})
    tell_all(exp, [dict(zip("abc", row)) for row in Y.tolist()])
    mask = pareto.non_dominated(Y)
    expected = Hypervolume(torch.zeros(3, dtype=torch.float64)).compute(torch.as_tensor(Y[mask]))
    assert exp.hypervolume({"a": 0.0, "b": 0.0, "c": 0.0}) == pytest.approx(float(expected))


def test_branin_currin_front_approaches_the_known_maximum():
    """The problem the benchmark uses: a dense sample of the front nearly fills 59.36 at (18, 6)."""
    problem = BraninCurrin()
    x = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = -problem(x).numpy()  # larger is better
    hv = pareto.hypervolume(Y, -np.array([18.0, 6.0]))
    assert 0.9 * problem.max_hv < hv <= problem.max_hv * (1 + 1e-6)


# ---- reference point -------------------------------------------------------------------------------


def test_reference_point_is_the_nadir_moved_out_by_a_tenth_of_the_range():
    exp = experiment({"loss": "minimize", "acc": "maximize"})
    tell_all(exp, [{"loss": 1.0, "acc": 0.6}, {"loss": 2.0, "acc": 0.8}, {"loss": 3.0, "acc": 0.9}])
    # front loss [1, 3], acc [0.6, 0.9]: worst loss 3 + 0.2, worst acc 0.6 - 0.03
    assert exp.reference_point == pytest.approx({"loss": 3.2, "acc": 0.57})
    assert exp.hypervolume() == pytest.approx(
        pareto.hypervolume(np.array([[-1.0, 0.6], [-2.0, 0.8], [-3.0, 0.9]]), np.array([-3.2, 0.57]))
    )


def test_reference_point_of_a_single_point_uses_its_magnitude():
    exp = experiment({"loss": "minimize", "acc": "maximize"})
    tell_all(exp, [{"loss": 2.0, "acc": 0.5}])
    assert exp.reference_point == pytest.approx({"loss": 2.2, "acc": 0.45})
    assert exp.hypervolume() == pytest.approx(0.2 * 0.05)


def test_thresholds_take_precedence_over_inference():
    exp = experiment({"loss": {"direction": "minimize", "threshold": 5.0}, "acc": "maximize"})
    assert exp.objectives == {"loss": "minimize", "acc": "maximize"}
    assert exp.objective_thresholds == {"loss": 5.0}
    with pytest.raises(NoCompletedTrialsError, match=r"without a threshold: \['acc'\]"):
        exp.reference_point
    # acc is inferred from the points that beat loss <= 5 only: the loss-9 point is out of scope
    tell_all(exp, [{"loss": 1.0, "acc": 0.6}, {"loss": 2.0, "acc": 0.8}, {"loss": 9.0, "acc": 0.99}])
    assert exp.reference_point == pytest.approx({"loss": 5.0, "acc": 0.58})
    both = experiment({"loss": {"direction": "minimize", "threshold": 5.0}, "acc": {"direction": "maximize", "threshold": 0.9}})
    assert both.reference_point == {"loss": 5.0, "acc": 0.9}, "known without any trial"
    assert both.hypervolume() == 0.0


def test_reference_point_needs_a_completed_trial():
    exp = experiment(MIN2)
    with pytest.raises(NoCompletedTrialsError, match="reference point"):
        exp.reference_point
    with pytest.raises(NoCompletedTrialsError):
        exp.hypervolume()
    trial = exp.ask()
    exp.tell(trial.index, failed="boom")
    with pytest.raises(NoCompletedTrialsError):
        exp.reference_point


def test_observations_carry_thresholds_and_reference_point_larger_is_better():
    exp = experiment({"loss": {"direction": "minimize", "threshold": 5.0}, "acc": "maximize"})
    tell_all(exp, [{"loss": 1.0, "acc": 0.6}, {"loss": 2.0, "acc": 0.8}])
    obs = exp.observations()
    np.testing.assert_allclose(obs.Y, [[-1.0, 0.6], [-2.0, 0.8]])
    np.testing.assert_allclose(obs.objective_thresholds, [-5.0, np.nan])
    ref = exp.reference_point
    np.testing.assert_allclose(obs.reference_point, [-ref["loss"], ref["acc"]])
    assert obs.C.shape == (2, 0)


# ---- objectives with thresholds: spec and JSON ----------------------------------------------------


@pytest.mark.parametrize(
    ("objectives", "problem"),
    [
        ({"a": {"direction": "up"}}, "objectives.a.direction must be 'minimize' or 'maximize'"),
        ({"a": {"threshold": 1.0}}, "objectives.a.direction"),
        ({"a": {"direction": "minimize", "threshold": "1"}}, "objectives.a.threshold: must be a number"),
        ({"a": {"direction": "minimize", "threshold": True}}, "objectives.a.threshold: must be a number"),
        ({"a": {"direction": "minimize", "threshold": math.nan}}, "objectives.a.threshold: must be finite"),
        ({"a": {"direction": "minimize", "bound": 1.0}}, "objectives.a: unknown field(s) ['bound']"),
        ({"a": "down"}, "objectives: 'a' must be 'minimize' or 'maximize'"),
    ],
)
def test_bad_objective_specs_name_the_field(objectives, problem):
    with pytest.raises(SpecError) as info:
        experiment(objectives)
    assert problem in str(info.value)


def test_thresholds_survive_the_json_round_trip_and_old_documents_still_load():
    exp = experiment({"loss": {"direction": "minimize", "threshold": 5.0}, "acc": "maximize"})
    tell_all(exp, [{"loss": 1.0, "acc": 0.6}, {"loss": 2.0, "acc": 0.8}])
    doc = json.loads(exp.to_json())
    assert doc["objectives"] == {"loss": "minimize", "acc": "maximize"}, "the old shape is kept"
    assert doc["objective_thresholds"] == {"loss": 5.0}
    again = Experiment.from_json(json.dumps(doc))
    assert again.objective_thresholds == {"loss": 5.0}
    assert again.reference_point == exp.reference_point
    assert again.to_dict() == exp.to_dict()
    for key in ("objective_thresholds", "outcome_constraints"):
        del doc[key]
    for t in doc["trials"]:
        del t["feasible"]
    old = Experiment.from_json(json.dumps(doc))
    assert old.objective_thresholds == {} and old.outcome_constraints == ()
    assert [t.feasible for t in old.trials] == [None, None]
    doc["objective_thresholds"] = {"nope": 1.0}
    with pytest.raises(SerializationError, match="not objectives"):
        Experiment.from_json(json.dumps(doc))


# ---- gp and auto with several objectives ----------------------------------------------------------


def branin_currin(params):
    y = BraninCurrin()(torch.tensor([[params["x0"], params["x1"]]], dtype=torch.float64))[0]
    return {"f1": float(y[0]), "f2": float(y[1])}


@pytest.mark.slow
@pytest.mark.e2e  # ~36 s of MOO fits on CI: run by `make test-e2e`
def test_auto_beats_random_in_hypervolume_on_branin_currin():
    """Seeded and short (20 trials, cheap acquisition): auto reaches ~0.9 of the maximum here,
    random ~0.1 (bench_moo.py measures the full picture)."""
    reference = {"f1": 18.0, "f2": 6.0}

    def run(algorithm):
        exp = Experiment("bc", UNIT, objectives=MIN2, algorithm=algorithm, seed=0,
                         algorithm_options=FAST if algorithm == "auto" else None)
        for _ in range(20):
            trial = exp.ask()
            exp.tell(trial.index, branin_currin(trial.params))
        return exp, exp.hypervolume(reference) / BraninCurrin().max_hv

    auto, auto_hv = run("auto")
    _, random_hv = run("random")
    assert {t.suggester for t in auto.trials[5:]} == {"gp"}
    assert auto_hv > 0.75 and auto_hv > random_hv + 0.3, (auto_hv, random_hv)


MIXED = [
    {"name": "x", "type": "range", "bounds": [0.0, 1.0]},
    {"name": "lr", "type": "range", "bounds": [1e-4, 1e-1], "log_scale": True},
    {"name": "layers", "type": "range", "bounds": [1, 6]},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd", "rmsprop"]},
]


def mixed_values(p):
    penalty = {"adam": 0.0, "sgd": 0.3, "rmsprop": 0.1}[p["opt"]]
    return {
        "loss": (p["x"] - 0.3) ** 2 + abs(math.log10(p["lr"]) + 2) + penalty,
        "size": p["layers"] + p["x"],
        "latency": 2.0 * p["layers"] + 10 * p["x"],
    }


@pytest.mark.parametrize("algorithm", ["gp", "auto"])
def test_gp_handles_several_objectives_constraints_and_pending_trials_on_a_mixed_space(algorithm):
    exp = Experiment(
        "mixed-mo", MIXED, objectives={"loss": "minimize", "size": "minimize"}, algorithm=algorithm, seed=0,
        outcome_constraints=["latency <= 9"],
        algorithm_options={**FAST, "mixed_optimizer_options": {"maxiter_alternating": 3}, **(
            {"n_initial": 4} if algorithm == "auto" else {})},
    )
    for trial in exp.ask(4):
        exp.tell(trial.index, mixed_values(trial.params))
    in_flight = exp.ask()
    batch = exp.ask(2)  # qLogNEHVI with the in-flight trial as X_pending, a batch of two
    assert {t.suggester for t in [in_flight, *batch]} == {"gp"}
    keys = {json.dumps(t.params, sort_keys=True) for t in exp.trials}
    assert len(keys) == len(exp.trials)
    for t in exp.trials:
        assert exp.space.validate_params(t.params) == t.params
    # the warm-started fitters of every outcome are checkpointed: a restored experiment continues identically
    state = exp.to_dict()["suggester_state"]
    fitters = state["model"] if algorithm == "auto" else state
    assert len(fitters["outcome_fitters"]) == 2  # size and the latency slack, beside loss's "fitter"
    again = Experiment.from_json(exp.to_json())
    assert again.ask().params == exp.ask().params


def test_four_objectives_use_parego_with_distinct_batch_points():
    objectives = {f"f{i}": "minimize" for i in range(4)}
    exp = Experiment("many", UNIT, objectives=objectives, algorithm="gp", seed=0, algorithm_options=FAST)
    rng = np.random.default_rng(0)
    for _ in range(4):
        trial = exp.ask()
        x = np.array([trial.params["x0"], trial.params["x1"]])
        exp.tell(trial.index, {f"f{i}": float(np.sum((x - c) ** 2)) for i, c in enumerate(rng.random((4, 2)))})
    batch = exp.ask(2)
    assert [t.suggester for t in batch] == ["gp", "gp"]
    assert batch[0].params != batch[1].params


def test_auto_on_a_small_all_choice_space_uses_the_model_for_several_objectives():
    space = [{"name": "a", "type": "choice", "values": [1, 2, 3]}, {"name": "b", "type": "choice", "values": ["x", "y"]}]
    single = Experiment("one", space, algorithm="auto", seed=0)
    assert single.suggester.bandit is not None, "one objective: a short list of arms"
    exp = Experiment("mo", space, objectives=MIN2, algorithm="auto", seed=0, algorithm_options={"n_initial": 2, **FAST})
    seen = []
    for _ in range(5):
        trial = exp.ask()
        seen.append((trial.suggester, trial.params["a"], trial.params["b"]))
        exp.tell(trial.index, {"f1": trial.params["a"], "f2": 4 - trial.params["a"] + (trial.params["b"] == "y")})
    assert [s for s, *_ in seen] == ["sobol", "sobol", "gp", "gp", "gp"]
    assert len({(a, b) for _, a, b in seen}) == 5, "the finite space is enumerated, never repeated"


def test_trials_outside_the_thresholds_are_not_on_the_pareto_front():
    """A 0.31-accuracy model is not a trade-off for someone whose threshold is 0.8, however small."""
    exp = Experiment("t", [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
                     objectives={"acc": {"direction": "maximize", "threshold": 0.8},
                                 "size": {"direction": "minimize", "threshold": 5e4}})
    values = [{"acc": 0.9, "size": 4e4}, {"acc": 0.85, "size": 2e4}, {"acc": 0.31, "size": 10.0},
              {"acc": 0.95, "size": 9e4}, {"acc": 0.8, "size": 3e4}]
    trials = []
    for v in values:
        t = exp.ask()
        exp.tell(t.index, v)
        trials.append(t)
    assert {t.index for t in exp.pareto_front()} == {trials[0].index, trials[1].index}
    assert [t.index for t in exp.outside_thresholds()] == [trials[2].index, trials[3].index]
    assert exp.meets_thresholds(exp.trial(trials[4].index))  # a value on the threshold is still worth having
    # dominated by trial 1 (0.85 > 0.8 at a smaller size), so not on the front, but inside the thresholds
    assert trials[4].index not in {t.index for t in exp.pareto_front()}
