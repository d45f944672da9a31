"""Shared test settings and helpers.

The environment defaults must be set before torch is imported (prefect_hpo sets OMP_WAIT_POLICY
itself, but only when it is imported first), so they live at the top of this file.
"""

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_HPO_TORCH_THREADS", "1")

import pytest  # noqa: E402

BRANIN_OPTIMUM = 0.397887357729738

BRANIN_SPACE = [
    {"name": "x1", "type": "range", "bounds": [-5.0, 10.0]},
    {"name": "x2", "type": "range", "bounds": [0.0, 15.0]},
]


def branin_value(x1: float, x2: float) -> float:
    """The Branin-Hoo function; global minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


@pytest.fixture
def branin():
    """``branin(params)`` evaluates a ``{"x1", "x2"}`` dict; see ``BRANIN_SPACE``."""
    return lambda params: branin_value(params["x1"], params["x2"])


@pytest.fixture
def branin_space():
    return [dict(p) for p in BRANIN_SPACE]
