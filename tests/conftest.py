"""Shared test settings and helpers.

The environment defaults must be in place before torch is first imported (prefect_hpo sets
OMP_WAIT_POLICY itself, but only if it is imported before torch), so they come first here.
"""

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_HPO_TORCH_THREADS", "1")

import pytest  # noqa: E402


def branin_value(x1: float, x2: float) -> float:
    """The Branin-Hoo function on [-5, 10] x [0, 15]; global minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


@pytest.fixture
def branin():
    """``branin(params)`` evaluates Branin at a ``{"x1": ..., "x2": ...}`` dict."""
    return lambda params: branin_value(params["x1"], params["x2"])
