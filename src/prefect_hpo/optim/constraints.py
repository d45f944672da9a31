"""Linear parameter constraints written as strings, e.g. ``"x1 + 2*x2 <= 10"``.

The string is parsed with Python's own expression parser (``ast``) rather than a regex, so any
linear expression a user would naturally write works (``2.5*x1 - x2 >= -3``, ``x1 <= x2``,
``(x1 + x2)/2 <= 4``) and anything non-linear is rejected with a message that says why.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from prefect_hpo.errors import SearchSpaceError

__all__ = ["LinearConstraint", "parse_constraint"]


class LinearConstraint(BaseModel):
    """``sum(coefficients[name] * value[name]) <= bound``, always stored in ``<=`` form."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expression: str
    coefficients: dict[str, float]
    bound: float

    def slack(self, values: Mapping[str, float]) -> float:
        """``bound - lhs``: non-negative when the constraint holds."""
        return self.bound - sum(c * float(values[n]) for n, c in self.coefficients.items())


_Linear = tuple[dict[str, float], float]  # (coefficients, constant)


def parse_constraint(expression: str) -> LinearConstraint:
    """Parse ``lhs <= rhs`` or ``lhs >= rhs`` where both sides are linear in parameter names."""
    if not isinstance(expression, str) or not expression.strip():
        raise SearchSpaceError(f"constraint {expression!r}: must be a non-empty string like 'x1 + 2*x2 <= 10'")
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise SearchSpaceError(f"constraint {expression!r}: not a valid expression ({exc.msg})") from None
    if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1):
        raise SearchSpaceError(f"constraint {expression!r}: needs exactly one '<=' or '>=' comparison")
    op = tree.ops[0]
    if not isinstance(op, (ast.LtE, ast.GtE)):
        raise SearchSpaceError(f"constraint {expression!r}: only '<=' and '>=' are supported")
    lhs = _linear(tree.left, expression)
    rhs = _linear(tree.comparators[0], expression)
    if isinstance(op, ast.GtE):
        lhs, rhs = rhs, lhs
    coefficients = dict(lhs[0])
    for name, c in rhs[0].items():
        coefficients[name] = coefficients.get(name, 0.0) - c
    coefficients = {n: c for n, c in coefficients.items() if c != 0.0}
    if not coefficients:
        raise SearchSpaceError(f"constraint {expression!r}: names no parameter")
    return LinearConstraint(expression=expression.strip(), coefficients=coefficients, bound=rhs[1] - lhs[1])


_ADD_SUB = {ast.Add: operator.add, ast.Sub: operator.sub}


def _linear(node: ast.expr, expression: str) -> _Linear:
    """Reduce an expression tree to (coefficients, constant), refusing anything non-linear."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        if not math.isfinite(node.value):
            raise SearchSpaceError(f"constraint {expression!r}: constants must be finite")
        return {}, float(node.value)
    if isinstance(node, ast.Name):
        return {node.id: 1.0}, 0.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        coefs, const = _linear(node.operand, expression)
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return {n: sign * c for n, c in coefs.items()}, sign * const
    if isinstance(node, ast.BinOp) and type(node.op) in _ADD_SUB:
        fn = _ADD_SUB[type(node.op)]
        (lc, lk), (rc, rk) = _linear(node.left, expression), _linear(node.right, expression)
        merged = dict(lc)
        for n, c in rc.items():
            merged[n] = fn(merged.get(n, 0.0), c)
        return merged, fn(lk, rk)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        left, right = _linear(node.left, expression), _linear(node.right, expression)
        if isinstance(node.op, ast.Div):
            if right[0] or right[1] == 0:
                raise SearchSpaceError(f"constraint {expression!r}: can only divide by a non-zero number")
            return {n: c / right[1] for n, c in left[0].items()}, left[1] / right[1]
        if left[0] and right[0]:
            raise SearchSpaceError(f"constraint {expression!r}: product of two parameters is not linear")
        (coefs, const), scale = (left, right[1]) if left[0] else (right, left[1])
        return {n: c * scale for n, c in coefs.items()}, const * scale
    raise SearchSpaceError(
        f"constraint {expression!r}: unsupported term {ast.unparse(node)!r} "
        "(use numbers, parameter names, +, -, * by a number and / by a number)"
    )
