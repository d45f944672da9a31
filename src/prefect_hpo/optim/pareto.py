"""Pareto fronts, reference points and hypervolumes, all for maximization.

Everything here works on arrays oriented so that larger is better in every column, the
orientation of :class:`~prefect_hpo.optim.suggesters.Observations`; the experiment flips
minimized objectives on the way in and out, so the user reads results in their own units.

The numerics are BoTorch's (``is_non_dominated``, ``Hypervolume``), so what the experiment
reports is exactly what the acquisition function optimizes.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated

__all__ = ["REFERENCE_SCALE", "hypervolume", "infer_reference_point", "non_dominated"]

#: How far past the nadir an inferred reference point lies, as a fraction of the front's range.
#: 0.1 is BoTorch's and Ax's default, after Ishibuchi et al. (2011), who found it robust.
REFERENCE_SCALE = 0.1

#: BoTorch's floor on a range (``MIN_Y_RANGE``), so a front at 0.0 still gets a positive margin.
_MIN_RANGE = 1e-7


def non_dominated(Y: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``Y`` (n, m) that no other row dominates.

    Duplicates are all kept: two trials with identical values are both Pareto-optimal
    configurations, and a user choosing among them should see both.
    """
    if len(Y) == 0:
        return np.zeros(0, dtype=bool)
    return is_non_dominated(torch.tensor(Y, dtype=torch.float64), deduplicate=False).numpy()


def infer_reference_point(front: np.ndarray, thresholds: np.ndarray) -> np.ndarray | None:
    """The reference point: ``thresholds`` where given, inferred elsewhere; None if impossible.

    ``front`` (n, m) is the observed Pareto front, ``thresholds`` (m,) holds NaN for objectives
    without a threshold. The inferred coordinates follow BoTorch's ``infer_reference_point``
    (the rule Ax applies when the user gives none): the nadir of the front (its worst value in
    each objective) moved away from the front by ``REFERENCE_SCALE`` (10%) of the front's range
    in that objective, so every Pareto point adds volume, extreme points included. Two details:

    * where thresholds are given, only the points that beat all of them count (a point worse than
      the user's threshold is outside the region of interest and should not stretch the box),
      unless none does, in which case the whole front is used;
    * where the front has no spread in an objective (a single point), the margin is 10% of the
      value's magnitude (at least 1e-7), BoTorch's rule for a single point, instead of a margin
      of zero that would give the front no volume.

    Returns None when some coordinate must be inferred and ``front`` is empty.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    given = ~np.isnan(thresholds)
    if given.all():
        return thresholds.copy()
    if len(front) == 0:
        return None
    front = np.asarray(front, dtype=np.float64)
    meets = (front[:, given] > thresholds[given]).all(axis=1)
    basis = front[meets] if meets.any() else front
    nadir, ideal = basis.min(axis=0), basis.max(axis=0)
    spread = ideal - nadir
    margin = np.where(spread > 0, spread, np.maximum(np.abs(nadir), _MIN_RANGE))
    reference = nadir - REFERENCE_SCALE * margin
    reference[given] = thresholds[given]
    return reference


def hypervolume(Y: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by the rows of ``Y`` (n, m) and bounded by ``reference`` (m,).

    Points that do not beat the reference point in every objective add nothing (BoTorch's
    convention), and dominated points add nothing either, so any set of observations may be
    passed, not only a front.
    """
    Y = np.asarray(Y, dtype=np.float64).reshape(-1, len(reference))
    reference = np.asarray(reference, dtype=np.float64)
    Y = Y[(Y > reference).all(axis=1)]
    if len(Y) == 0:
        return 0.0
    if Y.shape[1] == 1:
        return float(Y.max() - reference[0])
    front = torch.as_tensor(Y, dtype=torch.float64)
    front = front[is_non_dominated(front, deduplicate=True)]
    return float(Hypervolume(torch.as_tensor(reference, dtype=torch.float64)).compute(front))
