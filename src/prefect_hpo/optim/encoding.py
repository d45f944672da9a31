"""The one place where parameters become numbers for the optimizer, and back.

Suggesters never see parameter dicts; they work on points ``x`` of a *model space* with one
dimension per non-fixed parameter:

* float ranges: the unit interval, linear or on a log scale;
* int ranges and stepped ranges: the same unit interval, restricted to the normalized positions of
  the allowed values (a *discrete* dimension), so ``2`` and ``3`` stay ordered and nearby;
* ordered choices: a discrete dimension at ``i / (k - 1)``;
* unordered choices: a *categorical* dimension holding the integer code ``0..k-1`` (a categorical
  kernel in the GP, no false ordering).

Keeping this in one module means the GP, Sobol, random search and grid search agree exactly on
what a point means, and linear constraints are translated once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from prefect_hpo.optim.space import ChoiceParameter, FixedParameter, RangeParameter, SearchSpace, Value

__all__ = ["MAX_ENUMERATED_VALUES", "SpaceEncoder"]

#: Int or stepped ranges with more allowed values than this are modelled as continuous and snapped
#: to the nearest allowed value when decoded (enumerating a million integers helps nobody).
MAX_ENUMERATED_VALUES = 1000

DimKind = Literal["continuous", "discrete", "categorical"]


@dataclass(frozen=True)
class _Dim:
    param: RangeParameter | ChoiceParameter
    kind: DimKind
    grid: np.ndarray | None  # allowed model-space values (sorted) for discrete dims
    raw_values: tuple[Value, ...] | None  # the parameter values matching ``grid`` (or choice values)


class SpaceEncoder:
    """Maps parameter dicts to model-space vectors and back; see the module docstring."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.fixed: dict[str, Value] = {p.name: p.value for p in space.parameters if isinstance(p, FixedParameter)}
        self._dims: list[_Dim] = [
            _make_dim(p) for p in space.parameters if not isinstance(p, FixedParameter)
        ]
        self._index = {dim.param.name: i for i, dim in enumerate(self._dims)}
        self._constraints = self._constraints_in_model_space()

    # ---- shape of the model space -----------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self._dims)

    @property
    def names(self) -> list[str]:
        return [d.param.name for d in self._dims]

    @property
    def bounds(self) -> np.ndarray:
        """``(2, d)`` lower and upper bounds: ``[0, 1]`` except ``[0, k-1]`` for categorical dims."""
        upper = [len(d.param.values) - 1 if d.kind == "categorical" else 1.0 for d in self._dims]  # type: ignore[union-attr]
        return np.array([[0.0] * self.dim, upper], dtype=np.float64)

    @property
    def continuous_dims(self) -> list[int]:
        return [i for i, d in enumerate(self._dims) if d.kind == "continuous"]

    @property
    def discrete_dims(self) -> dict[int, list[float]]:
        """Ordinal dims (ints, steps, ordered choices) and their allowed model-space values."""
        return {i: d.grid.tolist() for i, d in enumerate(self._dims) if d.kind == "discrete"}  # type: ignore[union-attr]

    @property
    def categorical_dims(self) -> dict[int, list[float]]:
        return {
            i: [float(c) for c in range(len(d.param.values))]  # type: ignore[union-attr]
            for i, d in enumerate(self._dims)
            if d.kind == "categorical"
        }

    @property
    def n_configurations(self) -> int | None:
        """How many distinct points the space holds, or None when a dimension is continuous."""
        if self.continuous_dims:
            return None
        return math.prod(len(d.raw_values or ()) for d in self._dims)

    def all_points(self) -> np.ndarray:
        """Every point of a finite space (no continuous dimension), in lexicographic order."""
        if self.n_configurations is None:
            raise ValueError("all_points() needs a space without continuous dimensions")
        axes = [
            np.arange(len(d.param.values), dtype=np.float64) if d.kind == "categorical" else d.grid  # type: ignore[union-attr]
            for d in self._dims
        ]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)

    # ---- params <-> x -----------------------------------------------------------------------
    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        x = np.empty(self.dim, dtype=np.float64)
        for i, d in enumerate(self._dims):
            value = params[d.param.name]
            if isinstance(d.param, ChoiceParameter):
                code = d.param.index(value)
                x[i] = code if d.kind == "categorical" else d.grid[code]  # type: ignore[index]
            else:
                x[i] = _normalize(d.param, float(value))
        return x

    def encode_many(self, params: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not params:
            return np.zeros((0, self.dim), dtype=np.float64)
        return np.stack([self.encode(p) for p in params])

    def decode(self, x: np.ndarray) -> dict[str, Value]:
        """A valid parameter dict for any model-space point (snapped onto the allowed values)."""
        x = self.snap(np.asarray(x, dtype=np.float64).reshape(1, -1))[0]
        params: dict[str, Value] = {}
        for p in self.space.parameters:
            if isinstance(p, FixedParameter):
                params[p.name] = p.value
                continue
            i = self._index[p.name]
            d = self._dims[i]
            if d.kind == "categorical":
                params[p.name] = d.param.values[int(x[i])]  # type: ignore[union-attr]
            elif d.kind == "discrete":
                params[p.name] = d.raw_values[int(np.argmin(np.abs(d.grid - x[i])))]  # type: ignore[index,arg-type]
            else:
                assert isinstance(d.param, RangeParameter)
                params[p.name] = d.param.cast(_unnormalize(d.param, float(x[i])))
        return params

    def snap(self, X: np.ndarray) -> np.ndarray:
        """Round each row onto the nearest valid point (grid values, category codes, bounds)."""
        X = np.array(X, dtype=np.float64, copy=True)
        for i, d in enumerate(self._dims):
            if d.kind == "categorical":
                X[:, i] = np.clip(np.rint(X[:, i]), 0, len(d.param.values) - 1)  # type: ignore[union-attr]
            elif d.kind == "discrete":
                X[:, i] = _nearest(d.grid, X[:, i])  # type: ignore[arg-type]
            else:
                X[:, i] = np.clip(X[:, i], 0.0, 1.0)
                p = d.param
                if isinstance(p, RangeParameter) and (p.is_int or p.step is not None):
                    X[:, i] = [_normalize(p, float(p.cast(_unnormalize(p, z)))) for z in X[:, i]]
        return X

    def from_uniform(self, U: np.ndarray) -> np.ndarray:
        """Map points of ``[0, 1)^d`` (random or Sobol) to valid model-space points.

        Linear-scale ints and choices get equal probability per value; log-scale discrete ranges
        get their log-uniform share (nearest-value snapping in log space).
        """
        U = np.clip(np.asarray(U, dtype=np.float64), 0.0, np.nextafter(1.0, 0.0))
        X = np.array(U, copy=True)
        for i, d in enumerate(self._dims):
            if d.kind == "categorical":
                X[:, i] = np.floor(U[:, i] * len(d.param.values))  # type: ignore[union-attr]
            elif d.kind == "discrete" and not getattr(d.param, "log_scale", False):
                X[:, i] = d.grid[np.floor(U[:, i] * len(d.grid)).astype(int)]  # type: ignore[index,arg-type]
        return self.snap(X)

    # ---- linear constraints --------------------------------------------------------------------
    @property
    def inequality_constraints(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Constraints in BoTorch's form: ``sum(coef * x[idx]) >= rhs`` on the model space."""
        return [(idx.copy(), coef.copy(), rhs) for idx, coef, rhs in self._constraints]

    def pull_inside(self, X: np.ndarray) -> np.ndarray:
        """Move points that sit on (or a rounding error past) a constraint slightly inside it.

        An optimizer converging to a constraint boundary returns points that satisfy it only up
        to floating-point error, and decoding to parameter values adds more; a user checking
        ``a + b <= 2500.5`` must not see ``2500.5000000009``. Only continuous coordinates move, by
        a margin of about 1e-9 of the constraint's scale, so the point stays where the model put it.
        """
        X = np.array(X, dtype=np.float64, copy=True)
        continuous = {  # float ranges only: a relaxed int would be rounded straight back
            i for i in self.continuous_dims
            if isinstance(p := self._dims[i].param, RangeParameter) and not p.is_int and p.step is None
        }
        for idx, coef, rhs in self._constraints:
            movable = np.array([i in continuous for i in idx])
            if not movable.any():
                continue
            scale = 1.0 + abs(rhs) + float(np.abs(coef).sum())
            target = rhs + 2e-9 * scale
            shortfall = target - X[:, idx] @ coef
            rows = shortfall > 0
            if not rows.any():
                continue
            direction = np.where(movable, coef, 0.0)
            step = shortfall[rows, None] * direction / float(direction @ direction)
            X[np.ix_(rows, idx)] = np.clip(X[np.ix_(rows, idx)] + step, 0.0, 1.0)
        return X

    def feasible(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        ok = np.ones(len(X), dtype=bool)
        for idx, coef, rhs in self._constraints:
            ok &= X[:, idx] @ coef >= rhs - 1e-9 * (1.0 + abs(rhs))
        return ok

    def _constraints_in_model_space(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        out = []
        for c in self.space.constraints:
            idx, coef = [], []
            upper = c.bound
            for name, a in c.coefficients.items():
                p = self.space[name]
                assert isinstance(p, RangeParameter) and not p.log_scale  # enforced by the space
                lo, hi = p.bounds
                upper -= a * lo
                idx.append(self._index[name])
                coef.append(-a * (hi - lo))
            out.append((np.array(idx, dtype=np.int64), np.array(coef, dtype=np.float64), -upper))
        return out


def _make_dim(p: RangeParameter | ChoiceParameter) -> _Dim:
    if isinstance(p, ChoiceParameter):
        if p.is_ordered:
            grid = np.linspace(0.0, 1.0, len(p.values))
            return _Dim(p, "discrete", grid, tuple(p.values))
        return _Dim(p, "categorical", None, tuple(p.values))
    if not p.is_int and p.step is None:
        return _Dim(p, "continuous", None, None)
    values = _allowed_values(p)
    if values is None:
        return _Dim(p, "continuous", None, None)
    grid = np.array([_normalize(p, float(v)) for v in values])
    return _Dim(p, "discrete", grid, tuple(values))


def _allowed_values(p: RangeParameter) -> list[Value] | None:
    lo, hi = p.bounds
    step = p.step if p.step is not None else 1.0
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    if last - first + 1 > MAX_ENUMERATED_VALUES:
        return None
    candidates = [p.cast(k * step) for k in range(first, last + 1)] + [p.cast(lo), p.cast(hi)]
    return sorted(set(candidates))


def _transform(p: RangeParameter, v: float) -> float:
    return math.log(v) if p.log_scale else v


def _normalize(p: RangeParameter, v: float) -> float:
    lo, hi = (_transform(p, b) for b in p.bounds)
    return (_transform(p, v) - lo) / (hi - lo)


def _unnormalize(p: RangeParameter, z: float) -> float:
    if z <= 0.0 or z >= 1.0:  # the exact bound, not exp(log(bound)) one ulp away from it
        return p.bounds[0] if z <= 0.0 else p.bounds[1]
    lo, hi = (_transform(p, b) for b in p.bounds)
    t = lo + min(max(z, 0.0), 1.0) * (hi - lo)
    return math.exp(t) if p.log_scale else t


def _nearest(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    left, right = grid[pos - 1], grid[pos]
    return np.where(np.abs(values - left) <= np.abs(right - values), left, right)
