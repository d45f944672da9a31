"""Trial parameters through MLflow's params, which are strings: when they come back exactly.

A trial's child run logs its parameters as MLflow params (what the runs table shows). The typed
values used to be repeated as a ``prefect_hpo.params`` JSON tag, so a lost checkpoint could be
rebuilt from MLflow; that tag is now written only when the params alone would not bring the
values back (:func:`params_round_trip`), and :func:`params_from_strings` reads them back with
the search space's types. Nothing here talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_hpo.optim.space import ChoiceParameter, FixedParameter, RangeParameter, SearchSpace, Value
from prefect_hpo.storage.mlflow_values import clean_name

__all__ = ["MAX_PARAM_VALUE", "ParamsNotRecoverableError", "param_string", "params_from_strings", "params_round_trip"]

#: MLflow 3's longest param value (mlflow.utils.validation); longer ones are truncated.
MAX_PARAM_VALUE = 6000


class ParamsNotRecoverableError(ValueError):
    """The run's string params do not give one typed value per parameter of the space."""


def param_string(value: Any) -> str:
    """How the tracker spells a param value (before MLflow's length limit)."""
    return str(value)


def params_round_trip(params: Mapping[str, Any]) -> bool:
    """Whether :func:`params_from_strings` brings ``params`` back from their MLflow params.

    True only for scalars (bool, int, float, str: what a search space holds) whose name MLflow
    keeps as it is and whose string fits MLflow's limit; nested values, odd names and long
    strings need the JSON tag. ``str`` of a Python float round-trips exactly (shortest repr).
    """
    for name, value in params.items():
        if clean_name(name) != name or type(value) not in (bool, int, float, str):
            return False
        if len(param_string(value)) > MAX_PARAM_VALUE:
            return False
    return True


def params_from_strings(space: SearchSpace, strings: Mapping[str, str]) -> dict[str, Value]:
    """The typed parameters of a run from its string params, typed by ``space``.

    Raises :class:`ParamsNotRecoverableError` for a missing name, a string that is no value of
    its parameter, or a choice with two values of one spelling (``[1, "1"]``).
    """
    typed: dict[str, Value] = {}
    for p in space.parameters:
        if p.name not in strings:
            raise ParamsNotRecoverableError(f"parameter {p.name!r} is not among the run's params")
        typed[p.name] = _parse(p, strings[p.name])
    return typed


def _parse(p: RangeParameter | ChoiceParameter | FixedParameter, text: str) -> Value:
    if isinstance(p, RangeParameter):
        try:
            return int(text) if p.is_int else float(text)
        except ValueError:
            raise ParamsNotRecoverableError(f"parameter {p.name!r}: {text!r} is not a number") from None
    candidates = p.values if isinstance(p, ChoiceParameter) else [p.value]
    matches = [v for v in candidates if param_string(v) == text]
    if len(matches) != 1:
        raise ParamsNotRecoverableError(
            f"parameter {p.name!r}: {text!r} matches {len(matches)} of its values {list(candidates)}"
        )
    return matches[0]
