"""The ``bandit`` suggester (empirical-Bayes Thompson sampling) and ``auto``'s switch to it."""

import collections
import json
import math
import re

import numpy as np
import pytest

from prefect_hpo import Experiment, SpecError
from prefect_hpo.optim.suggesters import BanditSuggester

ARMS = [f"a{i}" for i in range(8)]
ONE_CHOICE = [{"name": "arm", "type": "choice", "values": ARMS}]
SMALL = [
    {"name": "opt", "type": "choice", "values": ["adam", "sgd", "rmsprop"]},
    {"name": "batch", "type": "choice", "values": [16, 32, 64, 128], "is_ordered": True},
    {"name": "epochs", "type": "fixed", "value": 10},
]
MIXED = [
    {"name": "lr", "type": "range", "bounds": [1e-4, 1e-1], "log_scale": True},
    {"name": "x", "type": "range", "bounds": [0.0, 1.0]},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd"]},
]
CANDIDATES = [
    {"lr": 1e-3, "x": 0.25, "opt": "adam"},
    {"lr": 3e-2, "x": 0.5, "opt": "sgd"},
    {"lr": 1e-4, "x": 1.0, "opt": "adam"},
]


def candidate_of(params):
    """The candidate a trial ran, or None. Log-scaled floats come back through the encoder's
    round trip (``exp(log(v))``), which may differ from the candidate's value in the last bit."""
    for c in CANDIDATES:
        if c.keys() == params.keys() and all(
            c[k] == params[k] if isinstance(c[k], str) else math.isclose(c[k], params[k], rel_tol=1e-12) for k in c
        ):
            return c
    return None


def bandit_experiment(parameters=ONE_CHOICE, seed=0, direction="maximize", algorithm="bandit", **options):
    return Experiment(
        "bandit", parameters, objectives={"r": direction}, algorithm=algorithm, seed=seed,
        algorithm_options=options or None,
    )


def arm_index(trial):
    return ARMS.index(trial.params["arm"])


def noisy_reward(noise_seed=1000, noise=0.3):
    """Arm ``a{i}`` pays ``0.1 * i`` plus Gaussian noise, from its own seeded stream."""
    noise_rng = np.random.default_rng(noise_seed)
    return lambda i: 0.1 * i + noise * noise_rng.normal()


def run(exp, reward, steps):
    pulls = []
    for _ in range(steps):
        trial = exp.ask()
        pulls.append(arm_index(trial))
        exp.tell(trial.index, reward(arm_index(trial)))
    return pulls


# ---- learning -------------------------------------------------------------------------------------


def test_thompson_sampling_converges_to_the_best_arm():
    exp = bandit_experiment(seed=0)
    pulls = run(exp, noisy_reward(), 150)
    last = collections.Counter(pulls[-50:])
    assert last[7] >= 35, last
    assert last.most_common(1)[0][0] == 7
    probs = exp.suggester.arm_probabilities(exp.observations())
    assert probs[0][0] == {"arm": "a7"} and probs[0][1] > 0.5, probs[:3]
    assert [p for _, p in probs] == sorted((p for _, p in probs), reverse=True)
    assert sum(p for _, p in probs) == pytest.approx(1.0)
    assert {params["arm"] for params, _ in probs} == set(ARMS)


@pytest.mark.parametrize(("direction", "best"), [("maximize", "a7"), ("minimize", "a0")])
def test_minimize_and_maximize_pick_the_right_arm(direction, best):
    exp = bandit_experiment(seed=2, direction=direction)
    noise_rng = np.random.default_rng(7)
    pulls = collections.Counter()
    for step in range(60):
        trial = exp.ask()
        if step >= 30:
            pulls[trial.params["arm"]] += 1
        exp.tell(trial.index, 0.1 * arm_index(trial) + 0.05 * noise_rng.normal())
    assert pulls.most_common(1)[0][0] == best, pulls
    assert exp.best_trial.params["arm"] == best
    assert exp.suggester.arm_probabilities(exp.observations())[0][0] == {"arm": best}


def test_a_deterministic_objective_is_exploited_once_every_arm_is_known():
    exp = bandit_experiment(seed=4)
    pulls = run(exp, lambda i: float(i), 30)
    assert sorted(pulls[:8]) == list(range(8))
    assert collections.Counter(pulls[-10:])[7] == 10, pulls


def test_shrinkage_pulls_a_single_extreme_observation_more_than_a_replicated_one():
    exp = bandit_experiment(parameters=[{"name": "arm", "type": "choice", "values": ARMS[:4]}])
    values = {"a0": [10.0], "a1": [9.5, 10.5] * 5, "a2": [0.0, 0.5, -0.5, 0.2], "a3": [0.1, -0.1, 0.3, -0.3]}
    for arm, ys in values.items():
        for y in ys:
            exp.tell(exp.attach_trial({"arm": arm}).index, y)
    post = {params["arm"]: (mean, sd) for params, mean, sd in exp.suggester.arm_posteriors(exp.observations())}
    grand_mean = np.mean([np.mean(ys) for ys in values.values()])
    pulled = {arm: (np.mean(values[arm]) - post[arm][0]) / (np.mean(values[arm]) - grand_mean) for arm in ("a0", "a1")}
    assert 0.0 < pulled["a1"] < pulled["a0"] < 1.0, pulled
    assert grand_mean < post["a0"][0] < 10.0
    assert post["a0"][1] > post["a1"][1], "one observation leaves more uncertainty than ten"


def test_posterior_follows_the_documented_formulas():
    exp = bandit_experiment(parameters=[{"name": "arm", "type": "choice", "values": ARMS[:4]}])
    values = {"a0": [1.0, 3.0], "a1": [4.0, 6.0, 5.0], "a2": [0.0]}
    for arm, ys in values.items():
        for y in ys:
            exp.tell(exp.attach_trial({"arm": arm}).index, y)
    sigma2 = (2.0 + 2.0) / (6 - 3)  # pooled within-arm variance, 3 degrees of freedom
    ybar, n = np.array([2.0, 5.0, 0.0]), np.array([2, 3, 1])
    mu = ybar.mean()
    tau2 = max(np.var(ybar, ddof=1) - np.mean(sigma2 / n), 0.0)
    shrink = (sigma2 / n) / (sigma2 / n + tau2)
    post = exp.suggester.arm_posteriors(exp.observations())
    assert [m for _, m, _ in post[:3]] == pytest.approx(mu + (1 - shrink) * (ybar - mu))
    assert [sd**2 for _, _, sd in post[:3]] == pytest.approx((1 - shrink) * sigma2 / n)
    assert post[3][1:] == pytest.approx((mu, np.sqrt(tau2 + sigma2))), "never pulled: the predictive prior"


def test_before_any_replicate_half_the_spread_is_taken_as_noise():
    exp = bandit_experiment(parameters=[{"name": "arm", "type": "choice", "values": ARMS[:3]}])
    for arm, y in (("a0", 0.0), ("a1", 1.0), ("a2", 5.0)):
        exp.tell(exp.attach_trial({"arm": arm}).index, y)
    means = [m for _, m, _ in exp.suggester.arm_posteriors(exp.observations())]
    mu = 2.0
    assert means == pytest.approx([mu + 0.5 * (y - mu) for y in (0.0, 1.0, 5.0)])


# ---- allocation -----------------------------------------------------------------------------------


def test_every_arm_is_tried_once_before_any_repeat():
    exp = bandit_experiment(seed=3)
    first = []
    for step in range(8):
        trial = exp.ask()
        first.append(trial.params["arm"])
        if step % 3 == 0:
            exp.tell(trial.index, failed="boom")  # a failed arm has been tried
        elif step % 3 == 1:
            exp.tell(trial.index, 1.0)  # the rest stay in flight, and count as tried too
    assert sorted(first) == ARMS
    assert first != ARMS, "the first round is in a seeded random order, not the space's order"


def test_a_batch_hands_out_distinct_untried_arms_first():
    exp = bandit_experiment(seed=1)
    batch = exp.ask(4)
    assert len({t.params["arm"] for t in batch}) == 4
    for trial in batch:
        exp.tell(trial.index, 0.0)
    exp.ask()
    second = exp.ask(4)
    seen = {t.params["arm"] for t in exp.trials[:5]}
    assert {t.params["arm"] for t in second[:3]} == set(ARMS) - seen, "the three untried arms come first"


def test_pending_pulls_spread_a_batch_over_plausible_arms():
    exp = bandit_experiment(seed=5)
    reward = noisy_reward(noise=1.0)
    run(exp, reward, 16)  # every arm twice: lots of uncertainty left
    batch = exp.ask(8)
    assert len({t.params["arm"] for t in batch}) >= 3, [t.params["arm"] for t in batch]


def test_failed_arms_stay_eligible():
    exp = bandit_experiment(parameters=[{"name": "arm", "type": "choice", "values": ["a", "b"]}], seed=0)
    flaky = exp.attach_trial({"arm": "a"})
    exp.tell(flaky.index, failed="transient")
    exp.tell(exp.attach_trial({"arm": "b"}).index, 1.0)
    assert {t.params["arm"] for t in exp.ask(40)} == {"a", "b"}


# ---- candidates and refusals ----------------------------------------------------------------------


def test_candidates_are_the_only_configurations_suggested():
    exp = bandit_experiment(parameters=MIXED, seed=0, candidates=CANDIDATES)
    manual = exp.attach_trial({"lr": 0.05, "x": 0.1, "opt": "sgd"})  # not an arm: ignored by the model
    exp.tell(manual.index, 100.0)
    for _ in range(15):
        trial = exp.ask()
        assert trial.suggester == "bandit"
        assert candidate_of(trial.params) is not None, trial.params
        assert trial.params in CANDIDATES, "exactly a candidate's values, not a decoded approximation"
        exp.tell(trial.index, trial.params["x"])
    assert sorted(t.params["x"] for t in exp.trials[1:4]) == [0.25, 0.5, 1.0], "each candidate once first"
    assert exp.suggester.arm_probabilities(exp.observations())[0][0] == CANDIDATES[2]


@pytest.mark.parametrize(
    ("candidates", "problem"),
    [
        ([CANDIDATES[0], {"lr": 1e-3, "x": 2.0, "opt": "adam"}], r"candidates\[1\]: parameter 'x': 2.0 is outside"),
        ([CANDIDATES[0], {"lr": 1e-3, "opt": "adam"}], r"candidates\[1\]: parameters: missing \['x'\]"),
        ([CANDIDATES[0], CANDIDATES[1], "adam"], r"candidates\[2\]: expected a dict"),
        ([CANDIDATES[0], CANDIDATES[1], dict(CANDIDATES[0])], r"candidates\[2\]: duplicates candidates\[0\]"),
        ([], "is empty"),
        ({"lr": 1e-3}, "expected a list"),
    ],
)
def test_bad_candidates_are_refused_with_their_index(candidates, problem):
    with pytest.raises(SpecError, match=problem):
        bandit_experiment(parameters=MIXED, candidates=candidates)


def test_a_candidate_breaking_a_constraint_is_refused():
    space = [{"name": "a", "type": "range", "bounds": [0.0, 1.0]}, {"name": "b", "type": "range", "bounds": [0.0, 1.0]}]
    with pytest.raises(SpecError, match=r"candidates\[0\]: .*violate the constraint 'a \+ b <= 1'"):
        Experiment("c", space, algorithm="bandit", parameter_constraints=["a + b <= 1"],
                   algorithm_options={"candidates": [{"a": 0.9, "b": 0.9}]})


def test_too_many_arms_is_refused_with_the_alternatives():
    space = [{"name": "p", "type": "range", "bounds": [1, 10]}, {"name": "q", "type": "choice", "values": list("abcdefg")}]
    with pytest.raises(SpecError, match=re.escape("70 configurations, more than max_arms=64") + ".*candidates.*'grid' or 'auto'"):
        Experiment("big", space, algorithm="bandit")
    exp = Experiment("big", space, algorithm="bandit", algorithm_options={"max_arms": 70})
    assert exp.suggester.n_arms == 70, "a small int range is a finite space too"
    with pytest.raises(SpecError, match="continuous values.*candidates"):
        Experiment("cont", MIXED, algorithm="bandit")
    with pytest.raises(SpecError, match="max_arms: must be a positive int"):
        Experiment("big", space, algorithm="bandit", algorithm_options={"max_arms": 0})


def test_infeasible_configurations_are_not_arms():
    space = [{"name": "a", "type": "range", "bounds": [0, 3]}, {"name": "b", "type": "range", "bounds": [0, 3]}]
    exp = Experiment("c", space, algorithm="bandit", seed=0, parameter_constraints=["a + b <= 3"])
    assert exp.suggester.n_arms == 10
    assert all(t.params["a"] + t.params["b"] <= 3 for t in exp.ask(20))


def test_several_objectives_are_refused():
    with pytest.raises(SpecError, match="single objective"):
        Experiment("mo", ONE_CHOICE, objectives={"a": "minimize", "b": "maximize"}, algorithm="bandit")


def test_outcome_constraints_are_refused_not_ignored():
    with pytest.raises(SpecError, match=r"'bandit': does not model outcome constraints.*latency <= 20"):
        Experiment("oc", ONE_CHOICE, algorithm="bandit", outcome_constraints=["latency <= 20"])
    with pytest.raises(SpecError, match=r"'auto': does not model outcome constraints"):  # auto with arms given
        Experiment("oc", ONE_CHOICE, algorithm="auto", algorithm_options={"candidates": [{"arm": ARMS[0]}]},
                   outcome_constraints=["latency <= 20"])


# ---- auto -----------------------------------------------------------------------------------------


def test_auto_uses_the_bandit_for_a_small_all_choice_space():
    exp = bandit_experiment(parameters=SMALL, algorithm="auto", seed=0)
    trials = exp.ask(12)
    assert {t.suggester for t in trials} == {"bandit"}
    assert len({(t.params["opt"], t.params["batch"]) for t in trials}) == 12
    for trial in trials:
        exp.tell(trial.index, float(trial.params["batch"] == 64))
    assert exp.ask().suggester == "bandit"


def test_auto_keeps_sobol_then_gp_for_mixed_or_large_spaces():
    assert bandit_experiment(parameters=MIXED, algorithm="auto").ask().suggester == "sobol"
    large = [{"name": "a", "type": "choice", "values": list(range(9))}, {"name": "b", "type": "choice", "values": list(range(8))}]
    assert bandit_experiment(parameters=large, algorithm="auto").ask().suggester == "sobol", "72 > 64 arms"
    ints = [{"name": "n", "type": "range", "bounds": [1, 4]}]
    assert bandit_experiment(parameters=ints, algorithm="auto").ask().suggester == "sobol", "ranges are not choices"


def test_auto_uses_the_bandit_when_candidates_are_given():
    exp = bandit_experiment(parameters=MIXED, algorithm="auto", candidates=CANDIDATES)
    trials = exp.ask(5)
    assert {t.suggester for t in trials} == {"bandit"}
    assert all(candidate_of(t.params) is not None for t in trials)


# ---- reproducibility ------------------------------------------------------------------------------


def test_same_seed_same_sequence():
    a, b = run(bandit_experiment(seed=11), noisy_reward(), 40), run(bandit_experiment(seed=11), noisy_reward(), 40)
    assert a == b
    assert run(bandit_experiment(seed=12), noisy_reward(), 40) != a


@pytest.mark.parametrize("algorithm", ["bandit", "auto"])
def test_a_restored_experiment_continues_identically(algorithm):
    exp = bandit_experiment(seed=8, algorithm=algorithm)
    reward = noisy_reward()
    run(exp, reward, 12)
    exp.tell(exp.ask().index, failed="boom")
    in_flight = exp.ask(2)
    doc = exp.to_json()
    restored = Experiment.from_json(doc)
    assert restored.to_json() == doc
    for trial in in_flight:
        for e in (exp, restored):
            e.tell(trial.index, 0.5)
    noise = [0.3 * x for x in np.random.default_rng(3).normal(size=20)]
    sequences = []
    for e in (exp, restored):
        pulls = []
        for z in noise:
            trial = e.ask()
            pulls.append((trial.params["arm"], trial.suggester))
            e.tell(trial.index, 0.1 * arm_index(trial) + z)
        pulls += [(t.params["arm"], t.suggester) for t in e.ask(3)]
        sequences.append(pulls)
    assert sequences[0] == sequences[1]
    assert {s for _, s in sequences[0]} == {"bandit"}


def test_candidates_survive_a_json_round_trip():
    exp = bandit_experiment(parameters=MIXED, seed=0, candidates=CANDIDATES)
    exp.ask(2)
    restored = Experiment.from_json(json.loads(json.dumps(exp.to_json())))
    assert isinstance(restored.suggester, BanditSuggester)
    assert restored.suggester.arm_params == CANDIDATES
    assert restored.ask().params == exp.ask().params
