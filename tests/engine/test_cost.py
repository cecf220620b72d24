"""Every built-in approach's cost formulas evaluate at its default parameters, and the evaluator
refuses anything but arithmetic."""

import pytest

from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry


def test_formulas_evaluate() -> None:
    assert evaluate("1 + n", {"n": 3}) == 4
    assert evaluate("3 * (2 * m + 2) + k", {"m": 6, "k": 3}) == 45
    assert evaluate("max(1, ceil(n / 2))", {"n": 5}) == 3


@pytest.mark.parametrize("formula", ["__import__('os')", "n.__class__", "unknown + 1", "[1][0]"])
def test_only_arithmetic_over_parameters(formula: str) -> None:
    with pytest.raises(ValueError):
        evaluate(formula, {"n": 1})


def test_every_builtin_formula_evaluates_at_its_defaults() -> None:
    for spec in builtin_registry().approaches():
        params = spec.validate_params({})
        assert evaluate(spec.calls, params) >= 1, spec.name
        assert 1 <= evaluate(spec.rounds, params) <= evaluate(spec.calls, params), spec.name


def test_plugin_formulas_count_only_their_own_calls() -> None:
    for spec in builtin_registry().plugins():
        params = spec.validate_params({})
        assert 0 <= evaluate(spec.rounds, params) <= evaluate(spec.calls, params), spec.name
