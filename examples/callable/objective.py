"""A Python-callable trial: ``branin`` is called as ``fn(params)`` in a trial subprocess.

``examples/callable.yaml`` names it as ``callable: objective:branin`` with
``trial.cwd: examples/callable``: the trial runs in that folder, which prefect-hpo puts on
``sys.path``, so ``objective`` imports as a top-level module (no package needed).

A callable may return a number (the value of the first objective), a dict of metrics, or None
after reporting with :func:`prefect_hpo.trial.report` itself. This one reports two intermediate
steps (a coarse and a finer estimate, as a long computation would) and returns the final value.

Branin on x1 in [-5, 10], x2 in [0, 15] has three global minima of 0.397887, at
(-pi, 12.275), (pi, 2.275) and (9.42478, 2.475). Try it standalone from the repository root::

    python -c "import sys; sys.path.insert(0, 'examples/callable'); import objective; print(objective.branin({'x1': 3.14159, 'x2': 2.275}))"
"""

from __future__ import annotations

import math

from prefect_hpo.trial import report

BRANIN_MINIMUM = 0.397887


def branin_value(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def branin(params: dict[str, float]) -> float:
    """The trial: Branin at (params["x1"], params["x2"]), with two intermediate reports."""
    x1, x2 = float(params["x1"]), float(params["x2"])
    value = branin_value(x1, x2)
    # Intermediate steps of a "computation" that converges to the value (the learning curve
    # early-stopping policies would watch); the returned number is the final value.
    report(step=1, loss=value + 1.0)
    report(step=2, loss=value + 0.1)
    return value
