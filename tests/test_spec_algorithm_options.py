"""``algorithm_options``: each algorithm declares its options (names, types, ranges) next to its
class, and a spec is checked against them before anything runs (issue 11: the README's ``gp``
example failed inside the flow with ``SurrogateFitter.__init__() got an unexpected keyword``)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.gp_model import SurrogateFitter
from prefect_hpo.optim.space import SearchSpace
from prefect_hpo.optim.suggesters import (
    GPSuggester,
    Suggester,
    available_suggesters,
    check_options,
    make_suggester,
    option_names,
)
from prefect_hpo.optim.suggesters import _REGISTRY as REGISTRY
from prefect_hpo.optim.suggesters.saasbo import saasbo_available
from prefect_hpo.spec import check_runnable, load_spec

SPACE = SearchSpace.parse([{"name": "x", "type": "range", "bounds": [0.0, 1.0]}, {"name": "y", "type": "range", "bounds": [0.0, 1.0]}])
ARMS = SearchSpace.parse([{"name": "opt", "type": "choice", "values": ["adam", "sgd"]}])  # the bandit needs finite arms
BUILT_IN = ["auto", "bandit", "gp", "grid", "random", "saasbo", "sobol"]
#: Where a constructor's ``**kwargs`` go: the options it takes are those of the target too.
FORWARDED: dict[type, Any] = {GPSuggester: SurrogateFitter.__init__}
NOT_OPTIONS = {"self", "encoder", "seed", "fallback"}  # given by the engine, not by a spec


def _constructor_options(init: Any, cls: type | None = None) -> dict[str, inspect.Parameter]:
    params = {n: p for n, p in inspect.signature(init).parameters.items() if n not in NOT_OPTIONS}
    out = {n: p for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if len(out) < len(params):  # **kwargs: forwarded to the model (gp) or to the gp suggester (auto)
        target = FORWARDED.get(cls) if cls is not None else None
        out.update(_constructor_options(target) if target else _constructor_options(GPSuggester.__init__, GPSuggester))
    return out


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_algorithm_declares_exactly_the_options_its_constructor_takes_with_the_same_defaults(name: str) -> None:
    cls: type[Suggester] = REGISTRY[name]
    assert cls.Options is not None, f"{name}: no Options declared"
    accepted = _constructor_options(cls.__init__, cls)
    assert sorted(cls.Options.model_fields) == sorted(accepted)
    for option, field in cls.Options.model_fields.items():
        default = accepted[option].default
        if default is not inspect.Parameter.empty:
            assert field.default == default, f"{name}.{option}: declared {field.default!r}, constructor {default!r}"


@pytest.mark.parametrize("name", [n for n in BUILT_IN if n != "saasbo" or saasbo_available()])
def test_every_option_given_at_its_declared_default_is_accepted(name: str) -> None:
    options = {k: f.default for k, f in REGISTRY[name].Options.model_fields.items()}  # type: ignore[union-attr]
    suggester = make_suggester(name, SpaceEncoder(ARMS if name == "bandit" else SPACE), seed=0, options=options)
    assert suggester.name == name


def test_an_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(SpecError) as info:
        check_options("gp", {"n_initial": 8, "kernel": "dim_scaled"})
    message = str(info.value)
    assert message.startswith("algorithm 'gp': bad algorithm_options.n_initial: unknown option; 'gp' takes: ")
    assert "min_observations" in message and "kernel" in message and "SurrogateFitter" not in message
    assert check_options("auto", {"n_initial": 8, "kernel": "dim_scaled"}) == {"n_initial": 8, "kernel": "dim_scaled"}


@pytest.mark.parametrize(
    ("name", "options", "fragments"),
    [
        ("auto", {"n_initial": -5, "bogus": 1}, ["algorithm_options.bogus: unknown option", "algorithm_options.n_initial", ">= 0"]),
        ("gp", {"num_restarts": 0}, ["algorithm_options.num_restarts", "greater than or equal to 1", "(got 0)"]),
        ("gp", {"num_restarts": True}, ["algorithm_options.num_restarts", "valid integer", "(got True)"]),
        ("gp", {"noise_floor": -1.0}, ["algorithm_options.noise_floor", "greater than 0"]),
        ("gp", {"warm_start": "yes"}, ["algorithm_options.warm_start", "valid boolean"]),
        ("gp", {"acquisition": "ucb"}, ["algorithm_options.acquisition", "'auto' or 'qlognei'"]),
        ("grid", {"shuffle": 1}, ["algorithm_options.shuffle", "boolean"]),
        ("random", {"seed": 3}, ["algorithm_options.seed: unknown option", "'random' takes: none"]),
    ],
)
def test_a_bad_option_is_refused_naming_it(name: str, options: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        check_options(name, options)
    for fragment in fragments:
        assert fragment.replace(">= 0", "greater than or equal to 0") in str(info.value), str(info.value)


def test_only_given_options_reach_the_constructor() -> None:
    assert check_options("gp", {"num_restarts": 3}) == {"num_restarts": 3}
    suggester = make_suggester("gp", SpaceEncoder(SPACE), seed=0, options={"num_restarts": 3})
    assert (suggester.num_restarts, suggester.raw_samples) == (3, 512)


def test_a_plugin_without_a_declaration_is_checked_against_its_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    class Walk(Suggester):
        name = "walk-test"

        def __init__(self, encoder: SpaceEncoder, *, seed: int, step: float = 0.1) -> None:
            super().__init__(encoder, seed=seed)
            self.step = step

        def suggest(self, observations, n, rng):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    monkeypatch.setitem(REGISTRY, "walk-test", Walk)
    assert option_names("walk-test") == ["step"]
    assert check_options("walk-test", {"step": 0.5}) == {"step": 0.5}
    with pytest.raises(SpecError, match=r"algorithm_options\.stride: unknown option; 'walk-test' takes: step"):
        check_options("walk-test", {"stride": 0.5})
    assert "walk-test" in available_suggesters()


def test_a_spec_is_refused_before_it_runs() -> None:
    spec = load_spec({
        "name": "opts", "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        "objectives": {"loss": "minimize"}, "budget": {"trials": 2}, "trial": {"command": "true"},
        "algorithm": "gp", "algorithm_options": {"n_initial": 8},
    })
    with pytest.raises(SpecError, match=r"algorithm_options\.n_initial: unknown option"):
        check_runnable(spec)
