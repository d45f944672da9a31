"""Grid search over a finite space, visited in a seeded random order.

Discretization rule for dimensions that are not already finite: a continuous (or very large int)
range becomes ``resolution`` evenly spaced points of its model space, i.e. evenly spaced on the
log scale for log-scaled parameters, ends included (default 5). Int and stepped ranges with at most
``resolution`` values, and all choices, keep every value. The visiting order is a seeded
permutation rather than lexicographic, so stopping a grid early still leaves an even spread.
"""

from __future__ import annotations

import math
import numpy as np

from prefect_hpo.errors import SearchSpaceError, SearchSpaceExhaustedError
from prefect_hpo.optim.encoding import SpaceEncoder
from prefect_hpo.optim.suggesters.base import Observations, StrictBool, StrictInt, Suggester, SuggesterOptions, Suggestion

MAX_GRID_POINTS = 1_000_000


class GridOptions(SuggesterOptions):
    resolution: StrictInt = 5  # points per continuous dimension; its range is checked by the suggester
    shuffle: StrictBool = True  # visit the grid in a seeded random order


class GridSuggester(Suggester):
    name = "grid"
    Options = GridOptions

    def __init__(self, encoder: SpaceEncoder, *, seed: int, resolution: int = 5, shuffle: bool = True) -> None:
        super().__init__(encoder, seed=seed)
        if resolution < 2:
            raise SearchSpaceError(f"grid resolution {resolution}: needs at least 2 points per dimension")
        self.axes = _axes(encoder, resolution)
        self.size = math.prod(len(a) for a in self.axes)
        if self.size > MAX_GRID_POINTS:
            raise SearchSpaceError(
                f"grid: {self.size} points exceed the limit of {MAX_GRID_POINTS}; "
                "lower the resolution or use algorithm 'sobol' or 'auto'"
            )
        self.order = np.random.default_rng(seed).permutation(self.size) if shuffle else np.arange(self.size)

    def suggest(self, observations: Observations, n: int, rng: np.random.Generator) -> list[Suggestion]:
        seen = {tuple(np.round(row, 12)) for row in observations.X_seen}
        out: list[np.ndarray] = []
        for flat in self.order:
            x = self._point(int(flat))
            if tuple(np.round(x, 12)) in seen or not self.encoder.feasible(x)[0]:
                continue
            out.append(x)
            seen.add(tuple(np.round(x, 12)))
            if len(out) == n:
                return self._label(np.stack(out))
        raise SearchSpaceExhaustedError(
            f"grid: all {self.size} grid points have been suggested (asked for {n}, {len(out)} left)"
        )

    def _point(self, flat: int) -> np.ndarray:
        x = np.empty(len(self.axes))
        for i in reversed(range(len(self.axes))):
            flat, r = divmod(flat, len(self.axes[i]))
            x[i] = self.axes[i][r]
        return x



def _axes(encoder: SpaceEncoder, resolution: int) -> list[np.ndarray]:
    discrete, categorical = encoder.discrete_dims, encoder.categorical_dims
    axes = []
    for i in range(encoder.dim):
        if i in categorical:
            axes.append(np.array(categorical[i]))
        elif i in discrete and len(discrete[i]) <= resolution:
            axes.append(np.array(discrete[i]))
        else:
            # evenly spaced in model space, then snapped so int/step grids stay valid
            column = np.linspace(0.0, 1.0, resolution)
            X = np.zeros((resolution, encoder.dim))
            X[:, i] = column
            axes.append(np.unique(encoder.snap(X)[:, i]))
    return axes
