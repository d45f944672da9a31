"""Suggesters (search algorithms) and the registry that names them.

Checkpoints store an algorithm's registered name, never an import path, so a saved experiment
still loads after the code moves. ``register_suggester`` adds a user-defined algorithm.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.suggesters.auto import AutoSuggester
from prefect_hpo.optim.suggesters.bandit import BanditSuggester
from prefect_hpo.optim.suggesters.base import Observations, Suggester, SuggesterOptions, Suggestion, sample_feasible
from prefect_hpo.optim.suggesters.gp import GPSuggester
from prefect_hpo.optim.suggesters.grid import GridSuggester
from prefect_hpo.optim.suggesters.random import RandomSuggester
from prefect_hpo.optim.suggesters.saasbo import SAASBOSuggester
from prefect_hpo.optim.suggesters.sobol import SobolSuggester

__all__ = [
    "AutoSuggester",
    "BanditSuggester",
    "GPSuggester",
    "GridSuggester",
    "Observations",
    "RandomSuggester",
    "SAASBOSuggester",
    "SobolSuggester",
    "Suggester",
    "Suggestion",
    "SuggesterOptions",
    "available_suggesters",
    "check_options",
    "make_suggester",
    "option_names",
    "register_suggester",
    "sample_feasible",
]

_REGISTRY: dict[str, type[Suggester]] = {}


def register_suggester(cls: type[Suggester]) -> type[Suggester]:
    """Make ``cls`` available as ``algorithm=cls.name`` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise SpecError(f"suggester {cls.__qualname__}: needs a non-empty class attribute 'name'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise SpecError(f"suggester name {name!r}: already registered by {existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available_suggesters() -> list[str]:
    return sorted(_REGISTRY)


def suggester_class(name: str) -> type[Suggester]:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"algorithm {name!r}: unknown (available: {', '.join(available_suggesters())})")
    return cls


def option_names(name: str) -> list[str] | None:
    """The options algorithm ``name`` takes, sorted; None when it takes any (a plugin with ``**kwargs``)."""
    cls = suggester_class(name)
    if cls.Options is not None:
        return sorted(cls.Options.model_fields)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
                  or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name not in ("encoder", "seed"))


def check_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of algorithm ``name`` as its constructor gets them: refused with a SpecError
    naming ``algorithm_options.<option>`` if unknown (listing the valid ones) or of a bad value.

    Only the options given are returned, so the constructor's defaults apply to the others."""
    cls = suggester_class(name)
    given = dict(options or {})
    valid = option_names(name)
    if cls.Options is None:
        unknown = [] if valid is None else sorted(set(given) - set(valid))
        if unknown:
            raise SpecError(f"algorithm {name!r}: {_unknown(name, unknown, valid or [])}")
        return given
    try:
        checked = cls.Options.model_validate(given)
    except ValidationError as exc:
        unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
        problems = [_unknown(name, unknown, valid or [])] if unknown else []
        for err in exc.errors():
            if err["type"] != "extra_forbidden":
                where = ".".join(str(x) for x in err["loc"])
                got = repr(err.get("input"))
                problems.append(f"bad algorithm_options.{where}: {err['msg']} (got {got if len(got) <= 60 else got[:57] + '...'})")
        raise SpecError(f"algorithm {name!r}: " + "; ".join(problems)) from None
    return {key: getattr(checked, key) for key in given}


def _unknown(name: str, unknown: list[str], valid: list[str]) -> str:
    listed = ", ".join(valid) if valid else "none"
    also = f" (so are {', '.join(unknown[1:])})" if unknown[1:] else ""
    return f"bad algorithm_options.{unknown[0]}: unknown option{also}; {name!r} takes: {listed}"


def make_suggester(name: str, encoder: SpaceEncoder, *, seed: int, options: Mapping[str, Any] | None = None) -> Suggester:
    cls = suggester_class(name)
    checked = check_options(name, options)
    try:
        return cls(encoder, seed=seed, **checked)
    except TypeError as exc:  # a plugin whose constructor refuses what its signature seemed to take
        raise SpecError(f"algorithm {name!r}: bad algorithm_options {dict(options or {})}: {exc}") from None

for _cls in (AutoSuggester, BanditSuggester, GPSuggester, GridSuggester, RandomSuggester, SAASBOSuggester, SobolSuggester):
    register_suggester(_cls)
