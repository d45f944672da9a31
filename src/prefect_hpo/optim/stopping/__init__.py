"""Early-stopping policies and the registry that names them (``stopping.policy`` in a spec).

Checkpoints and specs store a policy's registered name, never an import path.
``register_policy`` adds a user-defined rule.
"""

from __future__ import annotations

from typing import Any

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping.asha import ASHAPolicy
from prefect_hpo.optim.stopping.base import MetricHistory, NoStopping, StopDecision, StoppingPolicy
from prefect_hpo.optim.stopping.hyperband import HyperbandPolicy
from prefect_hpo.optim.stopping.percentile import MedianPolicy, PercentilePolicy
from prefect_hpo.optim.stopping.threshold import ThresholdPolicy

__all__ = [
    "ASHAPolicy",
    "HyperbandPolicy",
    "MedianPolicy",
    "MetricHistory",
    "NoStopping",
    "PercentilePolicy",
    "StopDecision",
    "StoppingPolicy",
    "ThresholdPolicy",
    "available_policies",
    "make_policy",
    "register_policy",
]

_REGISTRY: dict[str, type[StoppingPolicy]] = {}


def register_policy(cls: type[StoppingPolicy]) -> type[StoppingPolicy]:
    """Make ``cls`` available as ``stopping: {policy: cls.name}`` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == "base":
        raise SpecError(f"stopping policy {cls.__qualname__}: needs a class attribute 'name'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise SpecError(f"stopping policy name {name!r}: already registered by {existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, **settings: Any) -> StoppingPolicy:
    """Build a registered policy from its spec settings; unknown settings are an error."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"stopping.policy: {name!r} is unknown (available: {', '.join(available_policies())})")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise SpecError(f"stopping: policy {name!r} does not take these settings {sorted(settings)}: {exc}") from None


for _policy in (NoStopping, MedianPolicy, PercentilePolicy, ThresholdPolicy, ASHAPolicy, HyperbandPolicy):
    register_policy(_policy)
del _policy
