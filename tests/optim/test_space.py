"""Search spaces: both input styles, files, every validation error, constraints, validate_params."""

import json
import math

import numpy as np
import pytest
import yaml

from prefect_hpo import PrefectHPOError, SearchSpace, SearchSpaceError
from prefect_hpo.optim.constraints import parse_constraint
from prefect_hpo.optim.space import ChoiceParameter, FixedParameter, RangeParameter

AX_SPACE = [
    {"name": "x1", "type": "range", "bounds": [-10.0, 10.0]},
    {"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True},
    {"name": "layers", "type": "range", "bounds": [1, 4]},
    {"name": "units", "type": "range", "bounds": [16, 512], "log_scale": True, "value_type": "int"},
    {"name": "dropout", "type": "range", "bounds": [0.0, 0.5], "step": 0.1},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd", "rmsprop"]},
    {"name": "batch", "type": "choice", "values": [16, 32, 64], "is_ordered": True},
    {"name": "epochs", "type": "fixed", "value": 10},
]

NNI_SPACE = {
    "opt": {"_type": "choice", "_value": ["adam", "sgd"]},
    "layers": {"_type": "randint", "_value": [1, 5]},
    "dropout": {"_type": "uniform", "_value": [0, 0.5]},
    "units": {"_type": "quniform", "_value": [16, 256, 16]},
    "momentum": {"_type": "quniform", "_value": [0.5, 1.0, 0.1]},
    "lr": {"_type": "loguniform", "_value": [1e-4, 0.1]},
    "hidden": {"_type": "qloguniform", "_value": [8, 1024, 8]},
}


def error_for(parameters, constraints=None) -> str:
    """Parse a space that must be refused; return the message after checking the exception types."""
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.parse(parameters, constraints)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PrefectHPOError)
    return str(info.value)


# ---- the Ax style -------------------------------------------------------------------------------


def test_ax_style_parses_every_parameter_kind():
    space = SearchSpace.parse(AX_SPACE)

    assert space.names == [p["name"] for p in AX_SPACE]
    x1, lr, layers, units, dropout, opt, batch, epochs = space.parameters
    assert isinstance(x1, RangeParameter) and x1.value_type == "float" and x1.bounds == (-10.0, 10.0)
    assert not x1.log_scale and x1.step is None
    assert lr.log_scale and lr.value_type == "float"
    assert layers.value_type == "int" and layers.bounds == (1, 4)
    assert units.value_type == "int" and units.log_scale
    assert dropout.step == 0.1 and dropout.value_type == "float"
    assert isinstance(opt, ChoiceParameter) and opt.values == ["adam", "sgd", "rmsprop"] and not opt.is_ordered
    assert isinstance(batch, ChoiceParameter) and batch.is_ordered and batch.values == [16, 32, 64]
    assert isinstance(epochs, FixedParameter) and epochs.value == 10
    assert space.constraints == ()


@pytest.mark.parametrize(
    ("spec", "value_type"),
    [
        ({"bounds": [1, 4]}, "int"),  # Ax infers int from int bounds
        ({"bounds": [1.0, 4.0]}, "float"),
        ({"bounds": [1, 4.5]}, "float"),
        ({"bounds": [0, 10], "step": 2}, "int"),
        ({"bounds": [0, 10], "step": 2.0}, "int"),
        ({"bounds": [0, 10], "step": 2.5}, "float"),  # a fractional step makes the grid fractional
        ({"bounds": [1.0, 4.0], "value_type": "int"}, "int"),
        ({"bounds": [1, 4], "value_type": "float"}, "float"),
    ],
)
def test_range_value_type_inference(spec, value_type):
    space = SearchSpace.parse([{"name": "x", "type": "range", **spec}])
    assert space["x"].value_type == value_type


def test_parameter_objects_are_accepted_as_they_are():
    x = RangeParameter(name="x", bounds=(0.0, 1.0))
    space = SearchSpace.parse([x, {"name": "c", "type": "choice", "values": ["a", "b"]}])
    assert space["x"] is x
    assert space.names == ["x", "c"]


def test_getitem_unknown_name_raises_key_error():
    space = SearchSpace.parse(AX_SPACE)
    with pytest.raises(KeyError):
        space["nope"]


def test_to_list_round_trips_through_json():
    space = SearchSpace.parse(AX_SPACE, ["x1 + 2*dropout <= 5"])
    listed = json.loads(json.dumps(space.to_list()))
    again = SearchSpace.parse(listed, [c.expression for c in space.constraints])
    assert again == space
    assert again.to_list() == space.to_list()


def test_to_list_keeps_a_float_range_float_when_bounds_lose_their_decimal_point():
    space = SearchSpace.parse([{"name": "x", "type": "range", "bounds": [0.0, 10.0]}])
    [row] = space.to_list()
    row["bounds"] = [0, 10]  # what a JSON writer that prints 0.0 as 0 produces
    assert SearchSpace.parse([row]) == space


def test_parsing_a_space_with_new_constraints_keeps_its_own():
    base = SearchSpace.parse(
        [
            {"name": "x1", "type": "range", "bounds": [0.0, 1.0]},
            {"name": "x2", "type": "range", "bounds": [0.0, 1.0]},
        ],
        ["x1 + x2 <= 1"],
    )
    assert SearchSpace.parse(base) is base
    combined = SearchSpace.parse(base, ["x1 - x2 <= 0.5"])
    assert [c.expression for c in combined.constraints] == ["x1 + x2 <= 1", "x1 - x2 <= 0.5"]


# ---- the NNI style ------------------------------------------------------------------------------


def test_nni_style_parses_every_type():
    space = SearchSpace.parse(NNI_SPACE)

    assert space.names == list(NNI_SPACE)
    assert space["opt"] == ChoiceParameter(name="opt", values=["adam", "sgd"])
    layers = space["layers"]
    assert layers.value_type == "int" and layers.bounds == (1, 4), "randint's upper bound is exclusive"
    dropout = space["dropout"]
    assert dropout.value_type == "float" and dropout.bounds == (0.0, 0.5), "uniform never infers int"
    units = space["units"]
    assert units.value_type == "int" and units.step == 16 and units.bounds == (16, 256)
    momentum = space["momentum"]
    assert momentum.value_type == "float" and momentum.step == 0.1
    lr = space["lr"]
    assert lr.log_scale and lr.value_type == "float" and lr.bounds == (1e-4, 0.1)
    hidden = space["hidden"]
    assert hidden.log_scale and hidden.value_type == "int" and hidden.step == 8


def test_nni_and_ax_styles_give_the_same_space():
    nni = SearchSpace.parse({"lr": {"_type": "loguniform", "_value": [1e-4, 0.1]}, "n": {"_type": "randint", "_value": [0, 10]}})
    ax = SearchSpace.parse(
        [
            {"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True},
            {"name": "n", "type": "range", "bounds": [0, 9]},
        ]
    )
    assert nni == ax


# ---- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
@pytest.mark.parametrize("style", ["ax", "nni"])
def test_from_file(tmp_path, suffix, style):
    data = AX_SPACE if style == "ax" else NNI_SPACE
    path = tmp_path / f"space{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, sort_keys=False))
    assert SearchSpace.from_file(path) == SearchSpace.parse(data)
    assert SearchSpace.from_file(str(path)) == SearchSpace.parse(data)


def test_from_yaml_file_reads_exponent_numbers_as_floats(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 1e-4 as a *string*; it is how everyone writes a learning rate.
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr:\n  _type: loguniform\n  _value: [1e-4, 1e-1]\n"
        "wd:\n  _type: uniform\n  _value: [0, 1E-2]\n"
    )
    space = SearchSpace.from_file(path)
    assert space["lr"].bounds == (1e-4, 0.1)
    assert space["wd"].bounds == (0.0, 0.01)


def test_from_file_with_parameters_and_constraints(tmp_path):
    doc = {
        "parameters": [
            {"name": "x1", "type": "range", "bounds": [0.0, 10.0]},
            {"name": "x2", "type": "range", "bounds": [0.0, 10.0]},
            {"name": "opt", "type": "choice", "values": ["a", "b"]},
        ],
        "parameter_constraints": ["x1 + 2*x2 <= 10", "x1 >= x2"],
    }
    for path in (tmp_path / "space.yaml", tmp_path / "space.json"):
        path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))
        space = SearchSpace.from_file(path)
        assert space.names == ["x1", "x2", "opt"]
        assert [c.expression for c in space.constraints] == ["x1 + 2*x2 <= 10", "x1 >= x2"]
        assert space.constraints[0].coefficients == {"x1": 1.0, "x2": 2.0}
        assert space.constraints[1].coefficients == {"x1": -1.0, "x2": 1.0}


def test_parameters_document_in_python_with_nni_parameters_and_extra_constraints():
    doc = {
        "parameters": {"a": {"_type": "uniform", "_value": [0, 1]}, "b": {"_type": "uniform", "_value": [0, 1]}},
        "parameter_constraints": ["a + b <= 1.5"],
    }
    space = SearchSpace.parse(doc, ["a - b <= 0.5"])
    assert [c.expression for c in space.constraints] == ["a + b <= 1.5", "a - b <= 0.5"]


def test_nni_parameter_called_parameters_is_not_mistaken_for_a_document():
    space = SearchSpace.parse({"parameters": {"_type": "choice", "_value": [1, 2]}, "lr": {"_type": "uniform", "_value": [0, 1]}})
    assert space.names == ["parameters", "lr"]


def test_parameters_document_with_unknown_key():
    msg = error_for({"parameters": AX_SPACE, "constraints": ["x1 <= 1"]})
    assert "'constraints'" in msg and "unknown key" in msg


def test_from_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SearchSpaceError, match="nope.yaml.*cannot be read"):
        SearchSpace.from_file(missing)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(SearchSpaceError, match="bad.json.*not valid"):
        SearchSpace.from_file(bad_json)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1, 2\nb: {")
    with pytest.raises(SearchSpaceError, match="bad.yaml.*not valid"):
        SearchSpace.from_file(bad_yaml)


@pytest.mark.parametrize("parameters", ["x1", 42, None])
def test_parse_refuses_what_is_neither_style(parameters):
    assert "expected a list of parameter dicts" in error_for(parameters)


# ---- parameter validation errors: each names the parameter and the problem -------------------


def rng(**spec):
    return [{"name": "p", "type": "range", **spec}]


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        (rng(bounds=[1.0, 0.0]), "reversed"),
        (rng(bounds=[1.0, 1.0]), "equal"),
        (rng(bounds=[0.0, 1.0], log_scale=True), "log scale needs positive bounds"),
        (rng(bounds=[-1.0, 1.0], log_scale=True), "log scale needs positive bounds"),
        (rng(bounds=[0.5, 3], value_type="int"), "whole-number bounds"),
        (rng(bounds=[0.0, float("inf")]), "finite"),
        (rng(bounds=[0.0, 1.0], step=0.0), "step"),
        (rng(bounds=[0.0, 1.0], step=2.0), "step"),
        (rng(bounds=[0.0, 1.0], value_type="double"), "value_type"),
        (rng(bounds=[0, 10], step="two"), "step"),
        (rng(bounds=[0, 10], step=[2]), "step"),
        (rng(bounds=[0.0, "high"]), "bounds"),
        (rng(), "missing required key 'bounds'"),
        ([{"name": "p", "type": "choice", "values": []}], "empty"),
        ([{"name": "p", "type": "choice", "values": ["only"]}], "one entry"),
        ([{"name": "p", "type": "choice", "values": ["a", "b", "a"]}], "appears twice"),
        ([{"name": "p", "type": "fixed"}], "missing required key 'value'"),
        ([{"name": "p", "type": "ranged", "bounds": [0, 1]}], "unknown type 'ranged'"),
        ([{"name": "p", "bounds": [0, 1]}], "unknown type None"),
    ],
)
def test_parameter_errors_name_the_parameter_and_the_problem(parameters, problem):
    msg = error_for(parameters)
    assert "'p'" in msg
    assert problem in msg


def test_unknown_key_lists_the_allowed_keys():
    msg = error_for(rng(bounds=[0.0, 1.0], log=True))
    assert "parameter 'p'" in msg and "unknown key 'log'" in msg
    for allowed in ("bounds", "log_scale", "name", "step", "type", "value_type"):
        assert allowed in msg


def test_unknown_key_on_a_choice_lists_choice_keys():
    msg = error_for([{"name": "c", "type": "choice", "values": [1, 2], "ordered": True}])
    assert "unknown key 'ordered'" in msg and "is_ordered" in msg and "values" in msg


def test_duplicate_names():
    msg = error_for(
        [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}, {"name": "x", "type": "choice", "values": [1, 2]}]
    )
    assert "'x'" in msg and "used twice" in msg


@pytest.mark.parametrize("entry", [{"type": "range", "bounds": [0, 1]}, {"name": "", "type": "fixed", "value": 1}])
def test_missing_name_names_the_position(entry):
    msg = error_for([{"name": "ok", "type": "range", "bounds": [0.0, 1.0]}, entry])
    assert "parameter #1" in msg and "'name'" in msg


def test_a_parameter_that_is_not_a_dict():
    assert "parameter #0: expected a dict" in error_for(["x1"])


def test_empty_space_and_all_fixed_space():
    assert "no parameters" in error_for([])
    assert "every parameter is fixed" in error_for([{"name": "e", "type": "fixed", "value": 1}])


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"_type": "normal", "_value": [0, 1]}, "unknown _type 'normal'"),
        ({"_value": [0, 1]}, "unknown _type None"),
        ({"_type": "uniform", "_value": 3}, "_value must be a list"),
        ({"_type": "uniform", "_value": [0]}, "[low, high]"),
        ({"_type": "uniform", "_value": [0, 1, 2]}, "[low, high]"),
        ({"_type": "quniform", "_value": [0, 1]}, "[low, high, q]"),
        ({"_type": "loguniform", "_value": ["a", 1]}, "of numbers"),
        ({"_type": "randint", "_value": [True, 3]}, "of numbers"),
        ({"_type": "uniform", "_value": [0, 1], "_default": 0.5}, "unknown key(s) ['_default']"),
        ({"_type": "choice", "_value": [{"_name": "a"}, {"_name": "b"}]}, "nested"),
        ({"_type": "choice", "_value": ["a"]}, "one entry"),
        ({"_type": "uniform", "_value": [1, 0]}, "reversed"),
        ({"_type": "loguniform", "_value": [0, 1]}, "log scale needs positive bounds"),
        ({"_type": "randint", "_value": [3, 4]}, "equal"),
    ],
)
def test_nni_errors_name_the_parameter_and_the_problem(spec, problem):
    msg = error_for({"p": spec})
    assert "parameter 'p'" in msg
    assert problem in msg


def test_nni_entry_that_is_not_a_dict():
    assert "parameter 'p'" in error_for({"p": [0, 1]})


# ---- constraints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "coefficients", "bound"),
    [
        ("x1 + 2*x2 <= 10", {"x1": 1.0, "x2": 2.0}, 10.0),
        ("2.5*x1 - x2 >= -3", {"x1": -2.5, "x2": 1.0}, 3.0),
        ("x1 <= x2", {"x1": 1.0, "x2": -1.0}, 0.0),
        ("(x1 + x2)/2 <= 4", {"x1": 0.5, "x2": 0.5}, 4.0),
        ("x1 + 1 <= 2*x2 - 3", {"x1": 1.0, "x2": -2.0}, -4.0),
        ("-x1 >= -5", {"x1": 1.0}, 5.0),
        ("x1*3 + x2 - x2 + x3 <= 1", {"x1": 3.0, "x3": 1.0}, 1.0),
    ],
)
def test_constraint_parsing(expression, coefficients, bound):
    c = parse_constraint(expression)
    assert c.coefficients == pytest.approx(coefficients)
    assert set(c.coefficients) == set(coefficients)
    assert c.bound == pytest.approx(bound)
    assert c.expression == expression


def test_constraint_slack():
    c = parse_constraint("x1 + 2*x2 <= 10")
    assert c.slack({"x1": 2, "x2": 3}) == pytest.approx(2.0)
    assert c.slack({"x1": 4, "x2": 4}) == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("x1*x2 <= 1", "product of two parameters is not linear"),
        ("x1**2 <= 1", "unsupported term"),
        ("x1 / x2 <= 1", "divide by a non-zero number"),
        ("x1 / 0 <= 1", "divide by a non-zero number"),
        ("abs(x1) <= 1", "unsupported term"),
        ("x1 < 1", "only '<=' and '>='"),
        ("x1 == 1", "only '<=' and '>='"),
        ("x1 + x2 >= 1 <= 3", "exactly one"),
        ("x1 + x2", "exactly one"),
        ("x1 + <= 3", "not a valid expression"),
        ("1 <= 2", "names no parameter"),
        ("", "non-empty"),
    ],
)
def test_bad_constraint_expressions(expression, problem):
    with pytest.raises(SearchSpaceError) as info:
        parse_constraint(expression)
    assert repr(expression) in str(info.value)
    assert problem in str(info.value)


CONSTRAINED = [
    {"name": "x1", "type": "range", "bounds": [0.0, 1.0]},
    {"name": "x2", "type": "range", "bounds": [0.0, 1.0]},
    {"name": "lr", "type": "range", "bounds": [1e-4, 0.1], "log_scale": True},
    {"name": "opt", "type": "choice", "values": ["adam", "sgd"]},
    {"name": "e", "type": "fixed", "value": 3},
]


@pytest.mark.parametrize(
    ("constraint", "problem"),
    [
        ("x1 + x3 <= 1", "unknown parameter 'x3'"),
        ("x1 + opt <= 1", "parameter 'opt' is a choice parameter"),
        ("x1 + e <= 1", "parameter 'e' is a fixed parameter"),
        ("x1 + lr <= 1", "parameter 'lr' is log-scaled"),
        ("x1 * x2 <= 1", "not linear"),
        ("x1 < x2", "only '<=' and '>='"),
    ],
)
def test_constraint_errors_in_a_space(constraint, problem):
    msg = error_for(CONSTRAINED, [constraint])
    assert repr(constraint) in msg
    assert problem in msg


@pytest.mark.parametrize(
    ("constraints", "problem"),
    [
        ("x1 + x2 <= 1", "expected a list of constraint strings"),  # would otherwise be read letter by letter
        ([1], "constraint 1 is not a string"),
        ([None], "constraint None is not a string"),
    ],
)
def test_constraints_must_be_a_list_of_strings(constraints, problem):
    assert problem in error_for(CONSTRAINED, constraints)
    assert problem in error_for({"parameters": CONSTRAINED, "parameter_constraints": constraints})


# ---- validate_params ----------------------------------------------------------------------------


@pytest.fixture
def space():
    return SearchSpace.parse(
        [
            {"name": "x1", "type": "range", "bounds": [0.0, 10.0]},
            {"name": "x2", "type": "range", "bounds": [0.0, 10.0]},
            {"name": "n", "type": "range", "bounds": [1, 8]},
            {"name": "q", "type": "range", "bounds": [0.0, 1.0], "step": 0.25},
            {"name": "opt", "type": "choice", "values": ["adam", "sgd"]},
            {"name": "size", "type": "choice", "values": [16, 32], "is_ordered": True},
            {"name": "e", "type": "fixed", "value": 5},
        ],
        ["x1 + 2*x2 <= 10"],
    )


GOOD = {"x1": 2.0, "x2": 3.0, "n": 4, "q": 0.75, "opt": "sgd", "size": 32, "e": 5}


def test_validate_params_accepts_and_types_a_valid_assignment(space):
    typed = space.validate_params(GOOD)
    assert typed == GOOD
    typed = space.validate_params({**GOOD, "x1": 2, "n": 4.0, "size": 32.0, "q": 1})
    assert type(typed["x1"]) is float and typed["x1"] == 2.0
    assert type(typed["n"]) is int and typed["n"] == 4
    assert type(typed["size"]) is int and typed["size"] == 32, "a numerically equal choice maps to the choice value"
    assert type(typed["q"]) is float
    numpy_typed = space.validate_params(
        {**GOOD, "x1": np.float64(2.0), "n": np.int64(4), "opt": np.str_("sgd"), "size": np.int64(32)}
    )
    assert numpy_typed == GOOD
    assert [type(numpy_typed[k]) for k in ("x1", "n", "opt", "size")] == [float, int, str, int]


def test_validate_params_accepts_the_constraint_boundary(space):
    assert space.validate_params({**GOOD, "x1": 4.0, "x2": 3.0})["x1"] == 4.0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"x1": 10.5}, "parameter 'x1': 10.5 is outside the space (float range [0.0, 10.0])"),
        ({"x1": -0.1}, "parameter 'x1'"),
        ({"x1": float("nan")}, "parameter 'x1'"),
        ({"x1": "2.0"}, "parameter 'x1'"),
        ({"x1": True}, "parameter 'x1'"),
        ({"n": 2.5}, "parameter 'n': 2.5 is outside the space (int range"),
        ({"n": 9}, "parameter 'n'"),
        ({"n": float("inf")}, "parameter 'n'"),
        ({"q": 0.3}, "parameter 'q': 0.3 is outside"),
        ({"opt": "adamw"}, "parameter 'opt': 'adamw' is outside the space (one of ['adam', 'sgd'])"),
        ({"size": 24}, "parameter 'size'"),
        ({"size": True}, "parameter 'size'"),
        ({"size": "32"}, "parameter 'size'"),
        ({"e": 6}, "parameter 'e': 6 is outside the space (fixed at 5)"),
        ({"x1": 5.0, "x2": 3.0}, "violate the constraint 'x1 + 2*x2 <= 10'"),
    ],
)
def test_validate_params_errors(space, change, problem):
    with pytest.raises(SearchSpaceError) as info:
        space.validate_params({**GOOD, **change})
    assert problem in str(info.value)


def test_validate_params_missing_and_extra_names(space):
    params = dict(GOOD)
    del params["x2"]
    with pytest.raises(SearchSpaceError, match=r"missing \['x2'\], unknown \[\]"):
        space.validate_params(params)
    with pytest.raises(SearchSpaceError, match=r"missing \[\], unknown \['x9'\]"):
        space.validate_params({**GOOD, "x9": 1})


def test_stepped_int_range_only_allows_its_grid():
    space = SearchSpace.parse([{"name": "n", "type": "range", "bounds": [0, 10], "step": 3}])
    for ok in (0, 3, 6, 9, 10):  # the upper bound is allowed though not a multiple (clipped)
        assert space.validate_params({"n": ok}) == {"n": ok}
    for bad in (1, 5, 11):
        with pytest.raises(SearchSpaceError, match="parameter 'n'"):
            space.validate_params({"n": bad})


@pytest.mark.parametrize("value", [0.1 * 3, 0.7, 1.0, 0.0])
def test_stepped_float_range_tolerates_float_rounding(value):
    space = SearchSpace.parse([{"name": "m", "type": "range", "bounds": [0.0, 1.0], "step": 0.1}])
    assert math.isclose(space.validate_params({"m": value})["m"], value)
