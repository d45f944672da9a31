"""The model-space encoding: round trips, shapes, sampling, snapping, constraints, enumeration."""

import itertools

import numpy as np
import pytest

from prefect_hpo import SearchSpace, SearchSpaceError
from prefect_hpo.optim import SpaceEncoder
from prefect_hpo.optim.encoding import MAX_ENUMERATED_VALUES

MIXED = [
    {"name": "f", "type": "range", "bounds": [-2.0, 3.0]},
    {"name": "lf", "type": "range", "bounds": [1e-4, 1.0], "log_scale": True},
    {"name": "i", "type": "range", "bounds": [1, 5]},
    {"name": "li", "type": "range", "bounds": [1, 100], "log_scale": True},
    {"name": "st", "type": "range", "bounds": [0.0, 1.0], "step": 0.25},
    {"name": "oc", "type": "choice", "values": [16, 32, 64], "is_ordered": True},
    {"name": "uc", "type": "choice", "values": ["a", "b", "c", "d"]},
    {"name": "fx", "type": "fixed", "value": "z"},
    {"name": "big", "type": "range", "bounds": [0, 5000]},
]


@pytest.fixture
def encoder():
    return SpaceEncoder(SearchSpace.parse(MIXED))


def uniform(n, d, seed=0):
    return np.random.default_rng(seed).random((n, d))


def test_shapes_and_dimension_kinds(encoder):
    assert encoder.dim == 8, "the fixed parameter has no dimension"
    assert encoder.names == ["f", "lf", "i", "li", "st", "oc", "uc", "big"]
    assert encoder.fixed == {"fx": "z"}
    np.testing.assert_array_equal(encoder.bounds, [[0] * 8, [1, 1, 1, 1, 1, 1, 3, 1]])
    assert encoder.bounds.dtype == np.float64
    # an int range with more than MAX_ENUMERATED_VALUES values is modelled as continuous
    assert 5001 > MAX_ENUMERATED_VALUES
    assert encoder.continuous_dims == [0, 1, 7]
    discrete = encoder.discrete_dims
    assert sorted(discrete) == [2, 3, 4, 5]
    assert discrete[2] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert len(discrete[3]) == 100 and discrete[3][0] == 0 and discrete[3][-1] == pytest.approx(1)
    assert np.all(np.diff(discrete[3]) > 0)
    assert discrete[4] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert discrete[5] == pytest.approx([0, 0.5, 1])
    assert encoder.categorical_dims == {6: [0.0, 1.0, 2.0, 3.0]}
    assert encoder.n_configurations is None


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("f", [-2.0, 0.5, 3.0, 1.2345]),
        ("lf", [1e-4, 1e-2, 1.0, 0.0031]),
        ("i", [1, 2, 3, 4, 5]),
        ("li", [1, 2, 10, 57, 100]),
        ("st", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("oc", [16, 32, 64]),
        ("uc", ["a", "b", "c", "d"]),
        ("big", [0, 1, 2500, 4999, 5000]),
    ],
)
def test_encode_decode_round_trip(encoder, name, values):
    base = {"f": 0.0, "lf": 0.1, "i": 3, "li": 10, "st": 0.5, "oc": 32, "uc": "b", "fx": "z", "big": 7}
    for value in values:
        params = {**base, name: value}
        x = encoder.encode(params)
        assert x.shape == (8,)
        assert np.all(x >= encoder.bounds[0]) and np.all(x <= encoder.bounds[1])
        decoded = encoder.decode(x)
        assert decoded == pytest.approx(params)
        assert type(decoded[name]) is type(value)
        assert decoded["fx"] == "z"


def test_encoding_positions(encoder):
    params = {"f": 0.5, "lf": 1e-2, "i": 2, "li": 10, "st": 0.75, "oc": 64, "uc": "c", "fx": "z", "big": 1000}
    x = encoder.encode(params)
    assert x == pytest.approx([0.5, 0.5, 0.25, 0.5, 0.75, 1.0, 2.0, 0.2])


def test_encode_unknown_choice_value(encoder):
    params = {"f": 0.0, "lf": 0.1, "i": 3, "li": 10, "st": 0.5, "oc": 32, "uc": "e", "fx": "z", "big": 7}
    with pytest.raises(SearchSpaceError, match="parameter 'uc': 'e' is not one of"):
        encoder.encode(params)


def test_encode_many(encoder):
    assert encoder.encode_many([]).shape == (0, 8)
    points = [encoder.decode(x) for x in encoder.from_uniform(uniform(5, 8))]
    X = encoder.encode_many(points)
    assert X.shape == (5, 8) and X.dtype == np.float64


def test_from_uniform_gives_valid_points(encoder):
    X = encoder.from_uniform(uniform(500, 8))
    assert X.shape == (500, 8)
    np.testing.assert_array_equal(encoder.snap(X), X)
    for x in X:
        params = encoder.decode(x)
        assert encoder.space.validate_params(params) == params
        assert type(params["i"]) is int and type(params["big"]) is int and type(params["f"]) is float


def test_from_uniform_accepts_the_closed_cube_edges(encoder):
    X = encoder.from_uniform(np.vstack([np.zeros(8), np.ones(8)]))
    low, high = (encoder.decode(x) for x in X)
    assert low == {"f": -2.0, "lf": 1e-4, "i": 1, "li": 1, "st": 0.0, "oc": 16, "uc": "a", "fx": "z", "big": 0}
    assert high == pytest.approx({"f": 3.0, "lf": 1.0, "i": 5, "li": 100, "st": 1.0, "oc": 64, "uc": "d", "fx": "z", "big": 5000})


def frequencies(encoder, name, n=20_000):
    """Share of each value of ``name`` among ``n`` mapped uniform points (counted in model space)."""
    X = encoder.from_uniform(uniform(n, encoder.dim, seed=1))
    i = encoder.names.index(name)
    positions, counts = np.unique(X[:, i], return_counts=True)

    def value_at(z):
        x = X[0].copy()
        x[i] = z
        return encoder.decode(x)[name]

    return {value_at(z): c / n for z, c in zip(positions, counts)}


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("i", [1, 2, 3, 4, 5]),
        ("st", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("oc", [16, 32, 64]),
        ("uc", ["a", "b", "c", "d"]),
    ],
)
def test_from_uniform_gives_each_value_an_equal_share(encoder, name, values):
    freq = frequencies(encoder, name)
    assert set(freq) == set(values)
    for value in values:
        # standard error is about 0.003 at n=20000; 0.02 is a wide margin that still catches
        # the classic bug of half-weight end points (0.1 instead of 0.2).
        assert freq[value] == pytest.approx(1 / len(values), abs=0.02), (value, freq)


def test_from_uniform_log_int_gets_the_log_uniform_share(encoder):
    freq = frequencies(encoder, "li")
    assert set(freq) == set(range(1, 101))
    # log-uniform on [1, 100], each value taking the log-space interval nearest to it
    below_ten = sum(f for v, f in freq.items() if v <= 10)
    assert below_ten == pytest.approx(np.log(np.sqrt(110)) / np.log(100), abs=0.02)
    assert freq[2] == pytest.approx(np.log(3) / 2 / np.log(100), abs=0.01)
    assert freq[2] > freq[5] > freq[50]


def test_from_uniform_float_is_uniform_in_model_space(encoder):
    X = encoder.from_uniform(uniform(20_000, 8, seed=2))
    lf = np.array([encoder.decode(x)["lf"] for x in X[:2000]])
    assert np.mean(lf < 1e-2) == pytest.approx(0.5, abs=0.05), "log-uniform: half the mass below the log midpoint"
    assert np.mean(X[:, 0] < 0.25) == pytest.approx(0.25, abs=0.02)


def test_snap_is_idempotent_and_matches_decode_encode(encoder):
    rng = np.random.default_rng(3)
    X = rng.uniform(-0.3, 1.3, size=(300, 8))
    X[:, 6] = rng.uniform(-1, 4.5, size=300)  # the categorical dim's codes, out of range included
    snapped = encoder.snap(X)
    np.testing.assert_array_equal(encoder.snap(snapped), snapped)
    assert np.all(snapped >= encoder.bounds[0]) and np.all(snapped <= encoder.bounds[1])
    for x, s in zip(X, snapped):
        np.testing.assert_allclose(encoder.encode(encoder.decode(x)), s, atol=1e-12)
    assert X is not snapped and not np.array_equal(X, snapped), "snap returns a new array"


def test_snap_picks_the_nearest_allowed_value(encoder):
    x = np.array([[0.5, 0.5, 0.3, 0.5, 0.13, 0.74, 1.6, 0.50001]])
    s = encoder.snap(x)[0]
    assert s[2] == 0.25 and s[4] == 0.25 and s[5] == 0.5 and s[6] == 2.0
    assert encoder.decode(x[0])["big"] == 2500


# ---- constraints ---------------------------------------------------------------------------------

CONSTRAINED = [
    {"name": "x1", "type": "range", "bounds": [-5.0, 10.0]},
    {"name": "x2", "type": "range", "bounds": [0.0, 15.0]},
    {"name": "n", "type": "range", "bounds": [0, 20]},
    {"name": "s", "type": "range", "bounds": [0.0, 2.0], "step": 0.5},
    {"name": "lr", "type": "range", "bounds": [1e-3, 1.0], "log_scale": True},
    {"name": "opt", "type": "choice", "values": ["a", "b", "c"]},
]
CONSTRAINTS = ["x1 + 2*x2 <= 20", "n - x1 >= 2", "(x2 + s)/2 >= 1", "3*x1 - n + 4*s <= 15"]


def test_constraints_in_model_space_agree_with_validate_params():
    space = SearchSpace.parse(CONSTRAINED, CONSTRAINTS)
    encoder = SpaceEncoder(space)
    X = encoder.from_uniform(uniform(2000, encoder.dim, seed=4))
    mask = encoder.feasible(X)
    assert 0.05 < mask.mean() < 0.95, "the test needs both feasible and infeasible points"
    for x, ok in zip(X, mask):
        params = encoder.decode(x)
        try:
            space.validate_params(params)
        except SearchSpaceError as exc:
            assert not ok, f"model space says feasible, validate_params says {exc}"
        else:
            assert ok, f"model space says infeasible: {params}"


def test_inequality_constraints_are_in_botorch_form():
    space = SearchSpace.parse(CONSTRAINED, ["x1 + 2*x2 <= 20"])
    encoder = SpaceEncoder(space)
    [(idx, coef, rhs)] = encoder.inequality_constraints
    np.testing.assert_array_equal(idx, [0, 1])
    # x1 = -5 + 15*z0, x2 = 15*z1:  -5 + 15 z0 + 30 z1 <= 20  <=>  -15 z0 - 30 z1 >= -25
    np.testing.assert_allclose(coef, [-15.0, -30.0])
    assert rhs == pytest.approx(-25.0)
    idx[0] = 99  # a copy: the encoder's own arrays are not exposed
    assert encoder.inequality_constraints[0][0][0] == 0


def test_feasible_accepts_a_single_point():
    encoder = SpaceEncoder(SearchSpace.parse(CONSTRAINED, ["x1 + 2*x2 <= 20"]))
    assert encoder.feasible(np.zeros(encoder.dim)).tolist() == [True]
    assert encoder.feasible(np.ones(encoder.dim)).tolist() == [False]


# ---- finite spaces ------------------------------------------------------------------------------

FINITE = [
    {"name": "n", "type": "range", "bounds": [1, 3]},
    {"name": "size", "type": "choice", "values": [16, 32], "is_ordered": True},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd", "rms"]},
    {"name": "q", "type": "range", "bounds": [0.0, 1.0], "step": 0.5},
    {"name": "epochs", "type": "fixed", "value": 10},
]


def test_all_points_enumerates_a_finite_space_once_each():
    encoder = SpaceEncoder(SearchSpace.parse(FINITE))
    assert encoder.n_configurations == 3 * 2 * 3 * 3
    points = encoder.all_points()
    assert points.shape == (54, 4)
    decoded = [encoder.decode(x) for x in points]
    combos = {(p["n"], p["size"], p["opt"], p["q"]) for p in decoded}
    assert combos == set(itertools.product([1, 2, 3], [16, 32], ["adam", "sgd", "rms"], [0.0, 0.5, 1.0]))
    assert all(p["epochs"] == 10 for p in decoded)
    assert [tuple(x) for x in points] == sorted(tuple(x) for x in points), "lexicographic order"


def test_all_points_refuses_a_continuous_space(encoder):
    with pytest.raises(ValueError, match="continuous"):
        encoder.all_points()


def test_pull_inside_moves_boundary_points_strictly_inside_in_value_space():
    space = SearchSpace.parse(
        [{"name": "a", "type": "range", "bounds": [0, 5000]}, {"name": "b", "type": "range", "bounds": [0.0, 5000.0]}],
        ["a + b <= 2500.5"],
    )
    encoder = SpaceEncoder(space)
    on_boundary = encoder.encode({"a": 0, "b": 2500.5000000009})  # an optimizer's rounding error
    inside = encoder.pull_inside(on_boundary[None, :])[0]
    params = encoder.decode(inside)
    assert params["a"] == 0 and params["a"] + params["b"] <= 2500.5
    assert abs(params["b"] - 2500.5) < 1e-4  # moved by a rounding-sized margin, not elsewhere
    interior = encoder.encode({"a": 10, "b": 100.0})
    assert np.array_equal(encoder.pull_inside(interior[None, :])[0], interior)
