"""Approach cost formulas: `ApproachSpec.calls` and `.rounds` are arithmetic over the approach's
parameters (`1 + n`, `3 * (2 * planning_m + 2) + bestofn_n`), evaluated here. A formula gives the
cost of the full path; early stopping and fallbacks may make fewer calls, never more."""

from __future__ import annotations

import ast
import math
import operator
from typing import Any

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_FUNCS = {"min": min, "max": max, "ceil": math.ceil, "floor": math.floor}


def evaluate(formula: str, params: dict[str, Any]) -> int:
    """The formula's value for these parameters. Only numbers, parameter names, + - * / // % **,
    parentheses, a if c else b comparisons are not allowed; min, max, ceil and floor are."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in params:
                raise ValueError(f"unknown name {node.id!r} in cost formula {formula!r}")
            v = params[node.id]
            return int(v) if isinstance(v, bool) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*(value(a) for a in node.args))
        raise ValueError(f"unsupported syntax in cost formula {formula!r}")

    return int(value(ast.parse(formula, mode="eval")))
