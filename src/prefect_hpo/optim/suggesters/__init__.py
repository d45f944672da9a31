"""Suggesters (search algorithms) and the registry that names them.

Checkpoints store an algorithm's registered name, never an import path, so a saved experiment
still loads after the code moves. ``register_suggester`` adds a user-defined algorithm.
"""

from __future__ import annotations

from typing import Any

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.suggesters.auto import AutoSuggester
from prefect_hpo.optim.suggesters.bandit import BanditSuggester
from prefect_hpo.optim.suggesters.base import Observations, Suggester, Suggestion, sample_feasible
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
    "available_suggesters",
    "make_suggester",
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


def make_suggester(name: str, encoder: SpaceEncoder, *, seed: int, options: dict[str, Any] | None = None) -> Suggester:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"algorithm {name!r}: unknown (available: {', '.join(available_suggesters())})")
    try:
        return cls(encoder, seed=seed, **(options or {}))
    except TypeError as exc:
        raise SpecError(f"algorithm {name!r}: bad algorithm_options {options}: {exc}") from None


for _cls in (AutoSuggester, BanditSuggester, GPSuggester, GridSuggester, RandomSuggester, SAASBOSuggester, SobolSuggester):
    register_suggester(_cls)
