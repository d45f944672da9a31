"""Outcome constraints: bounds on measured metrics, written as ``"latency_ms <= 20"``.

Unlike a parameter constraint (:mod:`prefect_hpo.optim.constraints`), which is known before a
trial runs, an outcome constraint is only known once the trial reports the metric, so it cannot
shape the search space: the optimizer has to learn where it holds. That is why the form is
deliberately narrow, one metric against one number: the metric is modelled as an outcome of its
own, and a linear combination of metrics would be a new outcome nobody reported.

Every constraint is turned into a *slack* ``C`` with ``C <= 0`` meaning satisfied (BoTorch's
convention for constraint callables): ``value - bound`` for ``<=`` and ``bound - value`` for
``>=``. Like Ax, a value exactly on the bound satisfies the constraint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prefect_hpo.errors import SpecError

__all__ = ["OutcomeConstraint", "parse_outcome_constraints"]

Operator = Literal["<=", ">="]

# Metric names are whatever a training script logs (``val/latency``, ``memory-gb``), so anything
# without whitespace or comparison characters is accepted; the bound is parsed by float().
_FORM = re.compile(r"^\s*(?P<metric>[^\s<>=!]+)\s*(?P<op><=|>=|==|=|<|>|!=)\s*(?P<bound>\S+)\s*$")


@dataclass(frozen=True)
class OutcomeConstraint:
    """``metric <= bound`` or ``metric >= bound``; ``expression`` is the text the user wrote."""

    metric: str
    op: Operator
    bound: float
    expression: str

    def slack(self, value: float) -> float:
        """Signed distance to the bound, ``<= 0`` when satisfied (BoTorch's convention)."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def is_satisfied(self, value: float) -> bool:
        return self.slack(value) <= 0.0

    def __str__(self) -> str:
        return self.expression


def parse_outcome_constraints(
    expressions: Sequence[str] | None, objectives: Iterable[str]
) -> tuple[OutcomeConstraint, ...]:
    """Parse ``outcome_constraints``; every error names ``outcome_constraints[i]`` and the problem.

    A constrained metric may not be an objective: the model would fit the same numbers twice as
    two outcomes, and "minimize latency, subject to latency <= 20" is, for the optimizer, a region
    of interest on the objective, which is what an objective's ``threshold`` expresses.
    """
    if expressions is None:
        return ()
    if isinstance(expressions, (str, bytes)) or not isinstance(expressions, Sequence):
        raise SpecError(
            f"outcome_constraints: expected a list of strings like 'latency_ms <= 20', got {expressions!r}"
        )
    objective_names = set(objectives)
    out = []
    for i, text in enumerate(expressions):
        where = f"outcome_constraints[{i}]"
        if not isinstance(text, str):
            raise SpecError(f"{where}: expected a string like 'latency_ms <= 20', got {text!r}")
        match = _FORM.match(text)
        if match is None:
            raise SpecError(f"{where}: {text!r} is not of the form 'metric <= bound' or 'metric >= bound'")
        metric, op, raw_bound = match["metric"], match["op"], match["bound"]
        if op not in ("<=", ">="):
            raise SpecError(
                f"{where}: {text!r} uses {op!r}; an outcome constraint is 'metric <= bound' or 'metric >= bound'"
            )
        try:
            bound = float(raw_bound)
        except ValueError:
            raise SpecError(f"{where}: {text!r}: the bound {raw_bound!r} is not a number") from None
        if not math.isfinite(bound):
            raise SpecError(f"{where}: {text!r}: the bound must be finite, got {raw_bound!r}")
        if metric in objective_names:
            raise SpecError(
                f"{where}: {text!r}: {metric!r} is an objective; an outcome constraint bounds another "
                "metric (with several objectives, an objective's 'threshold' says which values matter)"
            )
        out.append(OutcomeConstraint(metric=metric, op=op, bound=bound, expression=text.strip()))  # type: ignore[arg-type]
    return tuple(out)
