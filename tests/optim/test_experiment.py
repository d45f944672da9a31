"""The ask/tell Experiment: life cycle, errors, best trial, observations, JSON round trip."""

import json
import math
from datetime import datetime

import numpy as np
import pytest

from prefect_hpo import (
    Experiment,
    NoCompletedTrialsError,
    PrefectHPOError,
    SearchSpaceError,
    SerializationError,
    SpecError,
    Trial,
    TrialError,
    TrialStatus,
    UnknownTrialError,
    available_suggesters,
)

SPACE = [
    {"name": "x", "type": "range", "bounds": [0.0, 10.0]},
    {"name": "n", "type": "range", "bounds": [1, 4]},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd"]},
    {"name": "epochs", "type": "fixed", "value": 10},
]


@pytest.fixture
def exp():
    return Experiment("test", SPACE, objectives={"loss": "minimize"}, algorithm="random", seed=0)


# ---- asking -------------------------------------------------------------------------------------


def test_ask_returns_a_pending_trial(exp):
    trial = exp.ask()
    assert isinstance(trial, Trial)
    assert trial.index == 0
    assert set(trial.params) == {"x", "n", "opt", "epochs"}
    assert exp.space.validate_params(trial.params) == trial.params
    assert trial.status is TrialStatus.PENDING
    assert trial.values is None and trial.failure_reason is None
    assert trial.suggester == "random"
    assert isinstance(trial.created_at, datetime) and trial.created_at.tzinfo is not None
    assert trial.started_at is None and trial.finished_at is None
    assert exp.trial(0) is trial
    assert exp.trials == (trial,)


def test_ask_n_returns_a_list_of_new_trials(exp):
    first = exp.ask(1)
    assert isinstance(first, list) and len(first) == 1
    batch = exp.ask(3)
    assert [t.index for t in batch] == [1, 2, 3]
    assert len({json.dumps(t.params, sort_keys=True) for t in first + batch}) == 4
    assert len(exp.trials) == 4


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_ask_refuses_a_bad_count(exp, n):
    with pytest.raises(TrialError, match="positive int"):
        exp.ask(n)


def test_ask_is_reproducible_for_a_seed():
    a = Experiment("a", SPACE, algorithm="random", seed=7)
    b = Experiment("b", SPACE, algorithm="random", seed=7)
    c = Experiment("c", SPACE, algorithm="random", seed=8)
    pa, pb, pc = ([t.params for t in e.ask(3)] for e in (a, b, c))
    assert pa == pb
    assert pa != pc


def test_attach_trial(exp):
    trial = exp.attach_trial({"x": 1, "n": 2.0, "opt": "sgd", "epochs": 10})
    assert trial.suggester == "manual" and trial.status is TrialStatus.PENDING
    assert trial.params == {"x": 1.0, "n": 2, "opt": "sgd", "epochs": 10}
    assert type(trial.params["x"]) is float and type(trial.params["n"]) is int


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"x": 11.0, "n": 2, "opt": "sgd", "epochs": 10}, "parameter 'x'"),
        ({"x": 1.0, "n": 2, "opt": "adamw", "epochs": 10}, "parameter 'opt'"),
        ({"x": 1.0, "n": 2, "opt": "sgd"}, "missing ['epochs']"),
        ({"x": 1.0, "n": 2, "opt": "sgd", "epochs": 10, "y": 0}, "unknown ['y']"),
    ],
)
def test_attach_trial_outside_the_space(exp, params, problem):
    with pytest.raises(SearchSpaceError) as info:
        exp.attach_trial(params)
    assert problem in str(info.value)
    assert exp.trials == (), "a refused trial is not recorded"


# ---- telling ------------------------------------------------------------------------------------


def test_life_cycle_pending_running_completed(exp):
    trial = exp.ask()
    running = exp.mark_running(trial.index)
    assert running is trial and trial.status is TrialStatus.RUNNING
    assert trial.started_at is not None and trial.started_at >= trial.created_at
    told = exp.tell(trial.index, {"loss": 1.5})
    assert told is trial
    assert trial.status is TrialStatus.COMPLETED and trial.values == {"loss": 1.5}
    assert trial.finished_at is not None and trial.finished_at >= trial.started_at
    assert trial.failure_reason is None


def test_tell_a_pending_trial_directly(exp):
    trial = exp.ask()
    exp.tell(trial.index, {"loss": 2})
    assert trial.status is TrialStatus.COMPLETED and trial.started_at is None
    assert trial.values == {"loss": 2.0} and type(trial.values["loss"]) is float


@pytest.mark.parametrize("value", [0.25, 3, np.float64(0.25), np.float32(0.25), np.int64(3)])
def test_tell_a_bare_number_for_a_single_objective(exp, value):
    trial = exp.ask()
    exp.tell(trial.index, value)
    assert trial.values == {"loss": float(value)} and type(trial.values["loss"]) is float


def test_tell_failed_with_a_reason(exp):
    trial = exp.ask()
    exp.tell(trial.index, failed="out of memory")
    assert trial.status is TrialStatus.FAILED
    assert trial.failure_reason == "out of memory"
    assert trial.values is None and trial.finished_at is not None


def test_tell_failed_with_an_exception(exp):
    trial = exp.ask()
    exp.tell(trial.index, failed=RuntimeError("CUDA error: device-side assert"))
    assert trial.status is TrialStatus.FAILED
    assert trial.failure_reason == "RuntimeError: CUDA error: device-side assert"


def test_tell_failed_with_an_exception_without_a_message(exp):
    trial = exp.ask()
    exp.tell(trial.index, failed=MemoryError())
    assert trial.failure_reason == "MemoryError"


def test_tell_failed_needs_a_reason_or_an_exception(exp):
    trial = exp.ask()
    with pytest.raises(TrialError, match="failed must be a reason"):
        exp.tell(trial.index, failed=True)
    assert trial.status is TrialStatus.PENDING


def test_abandon(exp):
    a, b = exp.ask(2)
    exp.mark_running(b.index)
    exp.abandon(a.index)
    exp.abandon(b.index, reason="worker lost")
    assert a.status is TrialStatus.ABANDONED and a.failure_reason == "abandoned"
    assert b.status is TrialStatus.ABANDONED and b.failure_reason == "worker lost"
    assert a.finished_at is not None
    with pytest.raises(TrialError, match="already abandoned"):
        exp.abandon(a.index)
    with pytest.raises(TrialError, match="already abandoned"):
        exp.tell(a.index, 1.0)


def test_status_properties():
    assert {s for s in TrialStatus if s.is_terminal} == {
        TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.FAILED, TrialStatus.ABANDONED
    }
    assert {s for s in TrialStatus if s.in_flight} == {TrialStatus.PENDING, TrialStatus.RUNNING}
    assert TrialStatus("running") is TrialStatus.RUNNING


@pytest.mark.parametrize("index", [1, -1, 99, "0", 0.0, True, None])
def test_unknown_trial_index(exp, index):
    exp.ask()
    for call in (exp.trial, exp.mark_running, exp.abandon, lambda i: exp.tell(i, 1.0)):
        with pytest.raises(UnknownTrialError) as info:
            call(index)
        assert isinstance(info.value, KeyError) and isinstance(info.value, TrialError)
        assert "no such trial" in str(info.value) and not str(info.value).startswith('"')


def test_numpy_integer_index_is_accepted(exp):
    trial = exp.ask()
    assert exp.trial(np.int64(trial.index)) is trial


def test_telling_twice_is_refused(exp):
    trial = exp.ask()
    exp.tell(trial.index, 1.0)
    with pytest.raises(TrialError, match="trial 0: already completed; a trial is told only once"):
        exp.tell(trial.index, 2.0)
    with pytest.raises(TrialError, match="already completed"):
        exp.tell(trial.index, failed="late")
    assert trial.values == {"loss": 1.0}
    failed = exp.ask()
    exp.tell(failed.index, failed="x")
    with pytest.raises(TrialError, match="already failed"):
        exp.tell(failed.index, 1.0)


def test_mark_running_only_from_pending(exp):
    trial = exp.ask()
    exp.mark_running(trial.index)
    with pytest.raises(TrialError, match="is running, only a pending trial"):
        exp.mark_running(trial.index)
    exp.tell(trial.index, 1.0)
    with pytest.raises(TrialError, match="is completed"):
        exp.mark_running(trial.index)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "missing ['loss']"),
        ({"acc": 0.9}, "missing ['loss']; unknown ['acc']"),
        ({"loss": 1.0, "acc": 0.9}, "unknown ['acc']"),
        ({"loss": "abc"}, "objective 'loss' must be a number, got 'abc'"),
        ({"loss": "1.5"}, "objective 'loss' must be a number"),
        ({"loss": None}, "objective 'loss' must be a number"),
        ({"loss": True}, "objective 'loss' must be a number"),
        ({"loss": [1.0]}, "objective 'loss' must be a number"),
        (None, "needs values"),
    ],
)
def test_tell_refuses_bad_values(exp, values, problem):
    trial = exp.ask()
    with pytest.raises(TrialError) as info:
        exp.tell(trial.index, values)
    assert problem in str(info.value)
    assert trial.status is TrialStatus.PENDING, "a refused tell changes nothing"


def test_tell_refuses_values_and_failed_together(exp):
    trial = exp.ask()
    with pytest.raises(TrialError, match="either values or failed, not both"):
        exp.tell(trial.index, 1.0, failed="boom")
    assert trial.status is TrialStatus.PENDING


def test_bare_number_needs_a_single_objective():
    exp = Experiment("mo", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="random", seed=0)
    trial = exp.ask()
    with pytest.raises(TrialError, match=r"give a dict with a value for each of \['loss', 'acc'\]"):
        exp.tell(trial.index, 1.0)
    exp.tell(trial.index, {"loss": 1.0, "acc": 0.5})
    assert trial.values == {"loss": 1.0, "acc": 0.5}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_mark_the_trial_failed(bad):
    exp = Experiment("nan", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="random", seed=0)
    good, diverged = exp.ask(2)
    exp.tell(good.index, {"loss": 1.0, "acc": 0.5})
    told = exp.tell(diverged.index, {"loss": bad, "acc": 0.5})
    assert told.status is TrialStatus.FAILED
    assert "objective 'loss'" in told.failure_reason and str(bad) in told.failure_reason
    assert told.values is None
    obs = exp.observations()
    assert obs.X.shape == (1, 3) and obs.Y.shape == (1, 2)
    assert np.all(np.isfinite(obs.Y))
    assert obs.X_failed.shape == (1, 3)


# ---- observations -------------------------------------------------------------------------------


def test_observations_split_trials_by_status_and_orient_y():
    exp = Experiment("obs", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="random", seed=0)
    t = exp.ask(6)
    exp.tell(t[0].index, {"loss": 2.0, "acc": 0.7})
    exp.tell(t[1].index, {"loss": 1.0, "acc": 0.9})
    exp.mark_running(t[2].index)
    exp.tell(t[3].index, failed="boom")
    exp.abandon(t[4].index)
    obs = exp.observations()
    assert obs.n_trials == 6 and obs.objectives == ("loss", "acc")
    np.testing.assert_array_equal(obs.Y, [[-2.0, 0.7], [-1.0, 0.9]])  # larger is better for every objective
    np.testing.assert_allclose(obs.X, exp.encoder.encode_many([t[0].params, t[1].params]))
    np.testing.assert_allclose(obs.X_pending, exp.encoder.encode_many([t[2].params, t[5].params]))
    np.testing.assert_allclose(obs.X_failed, exp.encoder.encode_many([t[3].params, t[4].params]))
    assert obs.X_seen.shape == (6, 3)
    with pytest.raises(ValueError):
        obs.X[0, 0] = 1.0  # read-only


def test_observations_of_an_empty_experiment(exp):
    obs = exp.observations()
    assert obs.X.shape == (0, 3) and obs.Y.shape == (0, 1) and obs.X_pending.shape == (0, 3)
    assert obs.n_trials == 0


# ---- best trial and summary -------------------------------------------------------------------


@pytest.mark.parametrize(("direction", "best"), [("minimize", 1), ("maximize", 2)])
def test_best_trial(direction, best):
    exp = Experiment("best", SPACE, objectives={"score": direction}, algorithm="random", seed=0)
    trials = exp.ask(5)
    exp.tell(trials[0].index, 3.0)
    exp.tell(trials[1].index, -1.0)
    exp.tell(trials[2].index, 7.0)
    exp.tell(trials[3].index, failed="boom")
    exp.tell(trials[4].index, {"score": float("nan")})
    assert exp.best_trial is trials[best]


def test_best_trial_tie_goes_to_the_earliest(exp):
    a, b = exp.ask(2)
    exp.tell(b.index, 1.0)
    exp.tell(a.index, 1.0)
    assert exp.best_trial is a


def test_best_trial_needs_a_completed_trial(exp):
    with pytest.raises(NoCompletedTrialsError, match="no completed trial"):
        exp.best_trial
    trial = exp.ask()
    exp.tell(trial.index, failed="boom")
    with pytest.raises(NoCompletedTrialsError) as info:
        exp.best_trial
    assert isinstance(info.value, LookupError) and isinstance(info.value, PrefectHPOError)


def test_best_trial_is_refused_for_several_objectives():
    exp = Experiment("mo", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="sobol", seed=0)
    trial = exp.ask()
    exp.tell(trial.index, {"loss": 1.0, "acc": 0.5})
    with pytest.raises(SpecError, match="2 objectives"):
        exp.best_trial


def test_summary(exp):
    a, b, c = exp.ask(3)
    exp.tell(a.index, 0.5)
    exp.tell(b.index, failed="boom")
    rows = exp.summary()
    assert rows[0] == {"index": 0, "status": "completed", **a.params, "loss": 0.5}
    assert rows[1] == {"index": 1, "status": "failed", **b.params, "reason": "boom"}
    assert rows[2] == {"index": 2, "status": "pending", **c.params}
    assert "trials=3" in repr(exp) and "completed=1" in repr(exp)


# ---- specification errors -----------------------------------------------------------------------


def test_multi_objective_with_a_single_objective_algorithm_is_refused():
    candidates = [{"x": 1.0, "n": 2, "opt": "sgd", "epochs": 10}]  # only the bandit can honour a list
    with pytest.raises(SpecError, match="algorithm 'bandit': optimizes a single objective"):
        Experiment("mo", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="bandit",
                   algorithm_options={"candidates": candidates})
    with pytest.raises(SpecError, match="algorithm 'auto': optimizes a single objective"):
        Experiment("mo", SPACE, objectives={"loss": "minimize", "acc": "maximize"}, algorithm="auto",
                   algorithm_options={"candidates": candidates})


def test_unknown_algorithm_lists_the_available_ones():
    with pytest.raises(SpecError) as info:
        Experiment("x", SPACE, algorithm="tpe-but-misspelled")
    message = str(info.value)
    assert "'tpe-but-misspelled'" in message
    for name in available_suggesters():
        assert name in message
    assert {"auto", "gp", "grid", "random", "sobol"} <= set(available_suggesters())


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": ""}, "name"),
        ({"objectives": {"loss": "minimise"}}, "'loss' must be 'minimize' or 'maximize'"),
        ({"objectives": {"": "minimize"}}, "non-empty strings"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"algorithm": "random", "algorithm_options": {"nope": 1}}, "bad algorithm_options"),
        ({"algorithm": "random", "algorithm_options": ["resolution", 3]}, "algorithm_options: expected a dict"),
    ],
)
def test_spec_errors(kwargs, problem):
    args = {"name": "x", "parameters": SPACE, **kwargs}
    with pytest.raises(SpecError) as info:
        Experiment(**args)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


def test_default_objective_and_random_seed():
    exp = Experiment("defaults", SPACE, algorithm="random")
    assert exp.objectives == {"objective": "minimize"}
    assert isinstance(exp.seed, int) and exp.seed >= 0


# ---- JSON round trip --------------------------------------------------------------------------

BRANIN = [
    {"name": "x1", "type": "range", "bounds": [-5.0, 10.0]},
    {"name": "x2", "type": "range", "bounds": [0.0, 15.0]},
]


def without_timestamps(doc: str) -> dict:
    data = json.loads(doc)
    for t in data["trials"]:
        for key in ("created_at", "started_at", "finished_at"):
            t.pop(key)
    return data


def mixed_history(exp, evaluate, n_told):
    """Tell ``n_told`` trials, then leave one failed, one running, one abandoned and one pending."""
    for _ in range(n_told):
        trial = exp.ask()
        exp.tell(trial.index, evaluate(trial.params))
    failed, running, abandoned, _pending = exp.ask(4)
    exp.tell(failed.index, failed=ValueError("diverged"))
    exp.mark_running(running.index)
    exp.abandon(abandoned.index, reason="preempted")
    exp.trial(running.index).metadata["run_id"] = "abc123"


ROUND_TRIP_CASES = [
    ("random", None),
    ("sobol", None),
    ("grid", {"resolution": 9}),
    ("auto", {"n_initial": 4}),  # past its Sobol phase: the next points come from the GP
]


@pytest.mark.parametrize(("algorithm", "options"), ROUND_TRIP_CASES)
def test_json_round_trip_restores_state_and_next_suggestions(algorithm, options, branin):
    exp = Experiment("rt", BRANIN, objectives={"y": "minimize"}, algorithm=algorithm, seed=3, algorithm_options=options)
    mixed_history(exp, branin, n_told=6)
    doc = exp.to_json()

    restored = Experiment.from_json(doc)
    assert restored.to_json() == doc
    assert Experiment.from_json(exp.to_json(indent=2)).to_json() == doc
    assert [t.status for t in restored.trials] == [t.status for t in exp.trials]
    assert restored.trials[-3].metadata == {"run_id": "abc123"}
    assert restored.trials[-4].failure_reason == "ValueError: diverged"

    expected, got = exp.ask(2), restored.ask(2)
    assert [t.params for t in got] == [t.params for t in expected]
    assert [t.suggester for t in got] == [t.suggester for t in expected]
    if algorithm == "auto":
        assert {t.suggester for t in got} == {"gp"}
    assert without_timestamps(restored.to_json()) == without_timestamps(exp.to_json())


def test_json_round_trip_of_every_parameter_kind_and_constraints():
    parameters = [
        {"name": "x1", "type": "range", "bounds": [0.0, 1.0]},
        {"name": "x2", "type": "range", "bounds": [0.0, 1.0]},
        {"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True},
        {"name": "n", "type": "range", "bounds": [1, 8]},
        {"name": "q", "type": "range", "bounds": [0, 1], "step": 0.25},
        {"name": "bs", "type": "choice", "values": [16, 32.0, 64], "is_ordered": True},
        {"name": "opt", "type": "choice", "values": ["adam", "sgd", True]},
        {"name": "fixed", "type": "fixed", "value": "v1"},
    ]
    exp = Experiment("kinds", parameters, algorithm="sobol", seed=1, parameter_constraints=["x1 + x2 <= 1.2"])
    for trial in exp.ask(5):
        exp.tell(trial.index, 1.0)
    doc = exp.to_json()
    restored = Experiment.from_json(doc.encode())
    assert restored.to_json() == doc
    assert restored.space == exp.space
    assert [t.params for t in restored.trials] == [t.params for t in exp.trials]
    for a, b in zip(restored.trials, exp.trials):
        assert [type(v) for v in a.params.values()] == [type(v) for v in b.params.values()]
    assert restored.ask().params == exp.ask().params


def good_document() -> dict:
    exp = Experiment("doc", BRANIN, algorithm="random", seed=0)
    exp.tell(exp.ask().index, 1.0)
    return json.loads(exp.to_json())


def corrupt(change):
    data = good_document()
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "not a prefect-hpo experiment document"),
        ('{"format": "ax/experiment"}', "not a prefect-hpo experiment document"),
        (corrupt(lambda d: d.update(version=99)), "version 99"),
        (corrupt(lambda d: d.pop("version")), "version None"),
        (corrupt(lambda d: d.pop("trials")), "missing field 'trials'"),
        (corrupt(lambda d: d.pop("seed")), "missing field 'seed'"),
        (corrupt(lambda d: d["trials"][0].pop("params")), "missing field 'params'"),
        (corrupt(lambda d: d["trials"][0].update(index=5)), "trial at position 0 has index 5"),
        (corrupt(lambda d: d["trials"][0].update(status="exploded")), "invalid content"),
        (corrupt(lambda d: d["trials"][0].update(created_at="yesterday")), "invalid content"),
        (corrupt(lambda d: d.update(trials=7)), "invalid content"),
        (corrupt(lambda d: d.update(ask_calls="many")), "invalid content"),
        (corrupt(lambda d: d.update(algorithm="nope")), "invalid content"),
        (corrupt(lambda d: d["parameters"][0].update(bounds=[1, 0])), "invalid content"),
    ],
)
def test_bad_documents_raise_serialization_error(document, problem):
    with pytest.raises(SerializationError) as info:
        Experiment.from_json(document)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)


def test_to_json_is_strict_json(exp):
    trial = exp.ask()
    exp.tell(trial.index, {"loss": math.inf})  # recorded as a failure, so no Infinity in the JSON
    data = json.loads(exp.to_json(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["format"] == "prefect-hpo/experiment" and data["version"] == 1
    assert data["trials"][0]["status"] == "failed"


def test_from_json_refuses_trial_params_outside_the_space():
    exp = Experiment("damaged", SPACE, algorithm="random", seed=0)
    exp.tell(exp.ask().index, 1.0)
    doc = exp.to_dict()
    doc["trials"][0]["params"]["x"] = 99.0  # bounds are [0, 10]
    with pytest.raises(SerializationError, match="trial 0.*'x'"):
        Experiment.from_dict(doc)


# ---- early-stopped trials -------------------------------------------------------------------


def _stopped_experiment():
    exp = Experiment("es", [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}], {"loss": "minimize"}, algorithm="random", seed=0)
    trials = exp.ask(3)
    for t in trials:
        exp.mark_running(t.index)
    return exp, trials


def test_stop_early_keeps_the_last_value_for_the_model_but_never_makes_it_best():
    exp, (a, b, c) = _stopped_experiment()
    exp.tell(a.index, {"loss": 0.5})
    stopped = exp.stop_early(b.index, {"loss": 0.1}, "asha on loss: ranks 3 of 3")  # better-looking, but cut short
    assert stopped.status is TrialStatus.EARLY_STOPPED and stopped.status.is_terminal
    assert stopped.values == {"loss": 0.1} and stopped.failure_reason == "asha on loss: ranks 3 of 3"
    assert exp.best_trial.index == a.index  # only trials that ran to the end can be best
    obs = exp.observations()
    assert len(obs.X) == 2 and sorted(obs.Y[:, 0]) == [-0.5, -0.1]  # both feed the model
    assert len(obs.X_pending) == 1  # c still runs
    with pytest.raises(TrialError, match="already early_stopped"):
        exp.tell(b.index, 1.0)


def test_stop_early_without_a_finite_value_stays_out_of_the_model():
    exp, (a, b, c) = _stopped_experiment()
    exp.stop_early(a.index, None, "threshold on loss: never reported")
    exp.stop_early(b.index, {"loss": float("nan")}, "median on loss: diverged")
    assert exp.trial(a.index).values is None and exp.trial(b.index).values is None
    obs = exp.observations()
    assert len(obs.X) == 0 and len(obs.X_failed) == 2
    with pytest.raises(TrialError, match="reason"):
        exp.stop_early(c.index, {"loss": 1.0}, "")
    with pytest.raises(NoCompletedTrialsError):
        exp.best_trial


def test_early_stopped_trials_survive_the_json_round_trip():
    exp, (a, b, _) = _stopped_experiment()
    exp.stop_early(a.index, {"loss": 0.3}, "median on loss: worse than the median")
    again = Experiment.from_json(exp.to_json())
    t = again.trial(a.index)
    assert t.status is TrialStatus.EARLY_STOPPED and t.values == {"loss": 0.3}
    assert t.failure_reason == "median on loss: worse than the median"
