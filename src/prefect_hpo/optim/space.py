"""Search spaces: typed parameters, linear constraints, and the two accepted input styles.

Users write spaces in the Ax style (a list of dicts) or the NNI style (a dict of
``{"_type": ..., "_value": ...}``), in Python or in a YAML/JSON file. Both are turned into the same
validated pydantic models here, and every mistake is reported as a :class:`SearchSpaceError` that
names the parameter and the problem, because a bad space found an hour into a GPU sweep is the
most expensive kind of typo.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefect_hpo.errors import SearchSpaceError
from prefect_hpo.optim.constraints import LinearConstraint, parse_constraint

__all__ = [
    "ChoiceParameter",
    "FixedParameter",
    "Parameter",
    "RangeParameter",
    "SearchSpace",
    "Value",
]

Value = Union[bool, int, float, str]


class _ParameterBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)


class RangeParameter(_ParameterBase):
    """A float or int interval, optionally log-scaled and optionally quantized by ``step``.

    ``step`` follows NNI's ``quniform`` rule: a value is ``clip(round(x / step) * step, lo, hi)``.
    """

    type: Literal["range"] = "range"
    bounds: tuple[float, float]
    value_type: Literal["float", "int"] = "float"
    log_scale: bool = False
    step: float | None = None

    @field_validator("bounds", mode="before")
    @classmethod
    def _numbers_not_bools(cls, v: Any) -> Any:
        """YAML's ``true`` would otherwise be read as the bound 1.0."""
        if isinstance(v, (list, tuple)) and any(isinstance(b, bool) for b in v):
            raise ValueError(f"bounds {list(v)} must be numbers, not booleans")
        return v

    @model_validator(mode="after")
    def _check(self) -> RangeParameter:
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"bounds {list(self.bounds)} must be finite numbers")
        if lo > hi:
            raise ValueError(f"bounds {list(self.bounds)} are reversed: the lower bound must come first")
        if not math.isfinite(hi - lo):  # every value in between would round to one of the ends
            raise ValueError(f"bounds {list(self.bounds)} are too far apart: their width overflows a float64")
        if lo == hi:
            raise ValueError(f"bounds {list(self.bounds)} are equal: use a fixed parameter for a constant")
        if self.log_scale and lo <= 0:
            raise ValueError(f"log scale needs positive bounds, got {list(self.bounds)}")
        if self.value_type == "int" and (lo != int(lo) or hi != int(hi)):
            raise ValueError(f"an int parameter needs whole-number bounds, got {list(self.bounds)}")
        if self.step is not None and not (math.isfinite(self.step) and 0 < self.step <= hi - lo):
            raise ValueError(f"step {self.step} must be positive and no larger than the range {hi - lo}")
        return self

    @property
    def is_int(self) -> bool:
        return self.value_type == "int"

    def cast(self, value: float) -> Value:
        """Snap a raw number onto the parameter's grid (int, step) and clip it to the bounds."""
        lo, hi = self.bounds
        if self.step is not None:
            value = round(value / self.step) * self.step
        value = min(max(value, lo), hi)
        return int(round(value)) if self.is_int else float(value)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        value = float(value)
        lo, hi = self.bounds
        if not (math.isfinite(value) and lo <= value <= hi):
            return False
        if self.is_int and not value.is_integer():
            return False
        if self.step is not None and value not in (lo, hi):
            # on the quniform grid: a whole multiple of step (the bounds themselves are allowed too)
            k = value / self.step
            if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                return False
        return True


class ChoiceParameter(_ParameterBase):
    """A finite set of values; unordered (categorical) unless ``is_ordered`` makes it ordinal."""

    type: Literal["choice"] = "choice"
    values: list[Value]
    is_ordered: bool = False
    value_type: Literal["int", "float", "str", "bool"] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChoiceParameter:
        if len(self.values) == 0:
            raise ValueError("values is empty: a choice needs at least two values")
        if len(self.values) == 1:
            raise ValueError(f"values {self.values} has one entry: use a fixed parameter for a constant")
        seen: set[tuple[str, Value]] = set()
        for v in self.values:
            key = (type(v).__name__, v)
            if key in seen:
                raise ValueError(f"value {v!r} appears twice in values {self.values}")
            seen.add(key)
        return self

    def contains(self, value: Any) -> bool:
        return self._find(value) is not None

    def index(self, value: Value) -> int:
        i = self._find(value)
        if i is None:
            raise SearchSpaceError(f"parameter {self.name!r}: {value!r} is not one of {self.values}")
        return i

    def _find(self, value: Any) -> int | None:
        for i, v in enumerate(self.values):
            if type(value) is type(v) and value == v:
                return i
        # JSON and YAML turn 1.0 into 1 and back, numpy gives int64/str_: accept an equal number or
        # string, but never let True stand for 1.
        for i, v in enumerate(self.values):
            if (_is_number(value) and _is_number(v)) or (isinstance(value, str) and isinstance(v, str)):
                if value == v:
                    return i
        return None


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class FixedParameter(_ParameterBase):
    """A constant that is passed to every trial but never searched."""

    type: Literal["fixed"] = "fixed"
    value: Value
    value_type: Literal["int", "float", "str", "bool"] | None = None

    def contains(self, value: Any) -> bool:
        return value == self.value


Parameter = Annotated[Union[RangeParameter, ChoiceParameter, FixedParameter], Field(discriminator="type")]

_PARAMETER_CLASSES: dict[str, type[_ParameterBase]] = {
    "range": RangeParameter,
    "choice": ChoiceParameter,
    "fixed": FixedParameter,
}

_NNI_TYPES = ("choice", "randint", "uniform", "quniform", "loguniform", "qloguniform")


class SearchSpace(BaseModel):
    """An ordered list of parameters plus linear constraints over the numeric ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameters: tuple[Parameter, ...]
    constraints: tuple[LinearConstraint, ...] = ()

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        parameters: SearchSpace | Sequence[Mapping[str, Any] | _ParameterBase] | Mapping[str, Any],
        constraints: Sequence[str] | None = None,
    ) -> SearchSpace:
        """Build a space from the Ax style (list of dicts) or the NNI style (dict of ``_type``)."""
        constraints = _constraint_list(constraints, "parameter_constraints")
        if isinstance(parameters, SearchSpace):
            if constraints:  # keep the space's own constraints and add the new ones
                return cls._build(list(parameters.parameters), [*parameters.constraints, *constraints])
            return parameters
        if isinstance(parameters, Mapping):
            inner = parameters.get("parameters")
            if inner is not None and not (isinstance(inner, Mapping) and "_type" in inner):
                # a file holding {"parameters": ..., "parameter_constraints": ...}, not an NNI
                # space with a parameter that happens to be called "parameters"
                extra = set(parameters) - {"parameters", "parameter_constraints"}
                if extra:
                    raise SearchSpaceError(f"search space: unknown key(s) {sorted(extra)}")
                own = _constraint_list(parameters.get("parameter_constraints"), "search space: parameter_constraints")
                return cls.parse(inner, own + constraints)
            return cls._build(_from_nni(parameters), constraints)
        if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Sequence):
            raise SearchSpaceError(
                "search space: expected a list of parameter dicts (Ax style) or a dict of "
                f"{{'_type', '_value'}} entries (NNI style), got {type(parameters).__name__}"
            )
        return cls._build([_parameter_from_dict(p, i) for i, p in enumerate(parameters)], constraints)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Read a space from a YAML or JSON file in either style."""
        data = load_document(path)
        return cls.parse(data)

    @classmethod
    def _build(cls, params: list[_ParameterBase], constraints: list[str | LinearConstraint]) -> SearchSpace:
        if not params:
            raise SearchSpaceError("search space: has no parameters")
        names: set[str] = set()
        for p in params:
            if p.name in names:
                raise SearchSpaceError(f"parameter {p.name!r}: the name is used twice")
            names.add(p.name)
        if all(isinstance(p, FixedParameter) for p in params):
            raise SearchSpaceError("search space: every parameter is fixed; there is nothing to search")
        by_name = {p.name: p for p in params}
        parsed = tuple(_check_constraint(parse_constraint(c) if isinstance(c, str) else c, by_name) for c in constraints)
        return cls(parameters=tuple(params), constraints=parsed)

    # ---- queries --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __getitem__(self, name: str) -> RangeParameter | ChoiceParameter | FixedParameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Value]:
        """Check a full assignment (all names, values in the space, constraints hold); return it typed."""
        missing = [n for n in self.names if n not in params]
        extra = [n for n in params if n not in self.names]
        if missing or extra:
            raise SearchSpaceError(f"parameters: missing {missing}, unknown {extra}")
        typed: dict[str, Value] = {}
        for p in self.parameters:
            value = params[p.name]
            if not p.contains(value):
                raise SearchSpaceError(f"parameter {p.name!r}: {value!r} is outside the space ({_describe(p)})")
            # canonical types: int/float for ranges, the space's own object for choices and fixed
            if isinstance(p, RangeParameter):
                typed[p.name] = int(value) if p.is_int else float(value)
            elif isinstance(p, ChoiceParameter):
                typed[p.name] = p.values[p.index(value)]
            else:
                typed[p.name] = p.value
        for c in self.constraints:
            if c.slack(typed) < -1e-9 * (1 + abs(c.bound)):
                raise SearchSpaceError(f"parameters {typed}: violate the constraint {c.expression!r}")
        return typed

    def to_list(self) -> list[dict[str, Any]]:
        """The canonical Ax-style description, with defaults left out (the JSON checkpoint form).

        A range always states its ``value_type``: otherwise a float range with whole-number bounds
        would read back as an int range from any JSON writer that prints ``0.0`` as ``0``.
        """
        out = []
        for p in self.parameters:
            row = p.model_dump(exclude_defaults=True) | {"type": p.type}
            if isinstance(p, RangeParameter):
                row["value_type"] = p.value_type
            out.append(row)
        return out


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``1e-4`` (no dot) as a string; learning rates are
    written exactly like that, so floats are resolved with the YAML 1.2 rule here.

    A key given twice is refused (YAML lets the last one win silently, so a reviewer reads one
    budget and the flow runs another), and so are aliases (``*name``): a spec never needs them,
    and a few hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed (write the value out)", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                if isinstance(key, Hashable):
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_document(path: str | Path) -> Any:
    """Parse a JSON (by suffix) or YAML file, with YAML 1.2 floats; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SearchSpaceError(f"file {str(path)!r}: cannot be read ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SearchSpaceError(
            f"file {str(path)!r}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    is_json = path.suffix.lower() == ".json"
    try:
        if is_json:
            return json.loads(text, object_pairs_hook=_json_object)
        return yaml.load(text, Loader=_YAMLLoader)  # noqa: S506 - SafeLoader subclass
    except (json.JSONDecodeError, _DuplicateKeyError) as exc:
        raise SearchSpaceError(f"file {str(path)!r}: not valid JSON ({exc})") from exc
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"file {str(path)!r}: not valid YAML ({_yaml_problem(exc)})") from exc


class _DuplicateKeyError(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"key {key!r} is given twice")
        out[key] = value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message spans several lines with a caret drawing; keep what and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def _constraint_list(constraints: Any, where: str) -> list[str | LinearConstraint]:
    """``None`` or a list of constraint strings; a bare string is refused (it would be read per letter)."""
    if constraints is None:
        return []
    if isinstance(constraints, (str, bytes)) or not isinstance(constraints, Sequence):
        raise SearchSpaceError(
            f"{where}: expected a list of constraint strings such as ['x1 + x2 <= 1'], got {constraints!r}"
        )
    for c in constraints:
        if not isinstance(c, (str, LinearConstraint)):
            raise SearchSpaceError(f"{where}: constraint {c!r} is not a string such as 'x1 + x2 <= 1'")
    return list(constraints)


def _describe(p: _ParameterBase) -> str:
    if isinstance(p, RangeParameter):
        kind = f"{p.value_type}{' log' if p.log_scale else ''}"
        return f"{kind} range {list(p.bounds)}"
    if isinstance(p, ChoiceParameter):
        return f"one of {p.values}"
    assert isinstance(p, FixedParameter)
    return f"fixed at {p.value!r}"


def _parameter_from_dict(raw: Mapping[str, Any] | _ParameterBase, position: int) -> _ParameterBase:
    if isinstance(raw, _ParameterBase):
        return raw
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"parameter #{position}: expected a dict, got {type(raw).__name__}")
    name = raw.get("name")
    label = f"parameter {name!r}" if isinstance(name, str) and name else f"parameter #{position}"
    if not isinstance(name, str) or not name:
        raise SearchSpaceError(f"{label}: needs a non-empty string 'name'")
    kind = raw.get("type")
    if kind not in _PARAMETER_CLASSES:
        raise SearchSpaceError(f"{label}: unknown type {kind!r} (expected one of {sorted(_PARAMETER_CLASSES)})")
    data = dict(raw)
    if kind == "range" and "value_type" not in data and "bounds" in data:
        bounds = data["bounds"]
        if isinstance(bounds, (list, tuple)) and bounds and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            # Ax infers int from int bounds; so do we, unless a step makes the grid fractional.
            step = data.get("step")
            if step is None or (
                isinstance(step, (int, float)) and not isinstance(step, bool) and float(step).is_integer()
            ):
                data["value_type"] = "int"
    return _validated(_PARAMETER_CLASSES[kind], data, label)


def _validated(model: type[_ParameterBase], data: Mapping[str, Any], label: str) -> _ParameterBase:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SearchSpaceError(f"{label}: {_explain(exc, model)}") from None


def _explain(exc: ValidationError, model: type[BaseModel]) -> str:
    """Turn pydantic's report into one line a user can act on."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = sorted(model.model_fields)
            parts.append(f"unknown key {where!r} (allowed: {', '.join(allowed)})")
        elif err["type"] == "value_error":
            parts.append(str(err["msg"]).removeprefix("Value error, "))
        elif err["type"] == "missing":
            parts.append(f"missing required key {where!r}")
        else:
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})" if where else err["msg"])
    return "; ".join(parts)


def _check_constraint(c: LinearConstraint, by_name: Mapping[str, _ParameterBase]) -> LinearConstraint:
    for name in c.coefficients:
        p = by_name.get(name)
        if p is None:
            raise SearchSpaceError(f"constraint {c.expression!r}: names unknown parameter {name!r}")
        if not isinstance(p, RangeParameter):
            raise SearchSpaceError(
                f"constraint {c.expression!r}: parameter {name!r} is a {p.type} parameter; "
                "constraints may only name numeric range parameters"
            )
        if p.log_scale:
            raise SearchSpaceError(
                f"constraint {c.expression!r}: parameter {name!r} is log-scaled; a linear constraint on it "
                "is not linear in the space the optimizer searches, so it is not supported"
            )
    return c


def _from_nni(space: Mapping[str, Any]) -> list[_ParameterBase]:
    """Translate NNI's ``{"name": {"_type": ..., "_value": [...]}}`` into parameters."""
    params: list[_ParameterBase] = []
    for name, spec in space.items():
        label = f"parameter {name!r}"
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(f"{label}: expected a dict with '_type' and '_value', got {spec!r}")
        unknown = set(spec) - {"_type", "_value"}
        if unknown:
            raise SearchSpaceError(f"{label}: unknown key(s) {sorted(unknown)} (allowed: _type, _value)")
        kind, value = spec.get("_type"), spec.get("_value")
        if kind not in _NNI_TYPES:
            raise SearchSpaceError(f"{label}: unknown _type {kind!r} (supported: {', '.join(_NNI_TYPES)})")
        if not isinstance(value, (list, tuple)):
            raise SearchSpaceError(f"{label}: _value must be a list, got {value!r}")
        params.append(_nni_parameter(str(name), kind, list(value), label))
    return params


def _nni_parameter(name: str, kind: str, value: list[Any], label: str) -> _ParameterBase:
    if kind == "choice":
        if any(isinstance(v, (Mapping, list)) for v in value):
            raise SearchSpaceError(f"{label}: nested (conditional) choices are not supported")
        return _validated(ChoiceParameter, {"name": name, "values": value}, label)
    expected = 3 if kind.startswith("q") else 2
    if len(value) != expected or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        shape = "[low, high, q]" if expected == 3 else "[low, high]"
        raise SearchSpaceError(f"{label}: _type {kind!r} needs _value {shape} of numbers, got {value}")
    data: dict[str, Any] = {"name": name, "bounds": (value[0], value[1])}
    if kind == "randint":  # NNI: upper bound exclusive
        data.update(bounds=(value[0], value[1] - 1), value_type="int")
    if kind in ("loguniform", "qloguniform"):
        data["log_scale"] = True
    if expected == 3:
        data["step"] = value[2]
        if all(float(v).is_integer() for v in value):
            data["value_type"] = "int"
    return _validated(RangeParameter, data, label)
