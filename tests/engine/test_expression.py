"""Approach expressions: parsing, precedence, flattening, canonical text, errors with positions."""

from __future__ import annotations

import pytest

from optigraph.engine.expression import (
    Approach,
    Parallel,
    Pipeline,
    choice_count,
    names,
    parse,
    to_text,
    validate,
)
from optigraph.errors import ExpressionError, InvalidRequest, UnknownApproach

KNOWN = {"none", "bon", "moa", "re2", "self_consistency", "cot_reflection", "mcts"}

a, b, c, d = (Approach(x) for x in "abcd")


def test_single_name():
    assert parse("self_consistency") == Approach("self_consistency")
    assert parse("re2") == Approach("re2")
    assert parse("  bon\t") == Approach("bon")


def test_ampersand_binds_tighter_than_bar():
    assert parse("a&b|c") == Parallel((Pipeline((a, b)), c))
    assert parse("a|b&c") == Parallel((a, Pipeline((b, c))))
    assert parse("a & b | c & d") == Parallel((Pipeline((a, b)), Pipeline((c, d))))


def test_parentheses_group():
    assert parse("(a|b)&c") == Pipeline((Parallel((a, b)), c))
    assert parse("a&(b|c)&d") == Pipeline((a, Parallel((b, c)), d))
    assert parse("((a))") == a
    assert parse("( a | b )") == Parallel((a, b))


@pytest.mark.parametrize("text", ["a&(b&c)", "(a&b)&c", "a&b&c", "((a&b))&(c)"])
def test_pipelines_flatten(text):
    assert parse(text) == Pipeline((a, b, c))


@pytest.mark.parametrize("text", ["a|(b|c)", "(a|b)|c", "a|b|c"])
def test_parallels_flatten(text):
    assert parse(text) == Parallel((a, b, c))


def test_nodes_are_hashable_and_frozen():
    node = parse("a&(b|c)")
    assert hash(node) == hash(parse("a & (b | c)"))
    with pytest.raises(AttributeError):
        node.stages = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("a", "a"),
        ("a & b", "a&b"),
        ("(a&b)|c", "a&b|c"),
        ("(a|b)&c", "(a|b)&c"),
        ("a&(b|c&d)", "a&(b|c&d)"),
        ("((a|b))|(c)", "a|b|c"),
        ("moa&(bon|self_consistency)&re2", "moa&(bon|self_consistency)&re2"),
        ("(a|b)&(c|d)", "(a|b)&(c|d)"),
    ],
)
def test_to_text_is_canonical_and_round_trips(text, canonical):
    node = parse(text)
    assert to_text(node) == canonical
    assert parse(to_text(node)) == node


def test_names_in_order_with_repeats():
    assert names(parse("bon&(moa|bon)&re2")) == ["bon", "moa", "bon", "re2"]
    assert names(parse("none")) == ["none"]


@pytest.mark.parametrize(
    "text, count",
    [("a", 1), ("a&b", 1), ("a|b", 2), ("a|b|c", 3), ("(a|b)&(c|d)", 4), ("a&b|c", 2), ("(a|b)&c|d", 3)],
)
def test_choice_count(text, count):
    assert choice_count(parse(text)) == count


@pytest.mark.parametrize(
    "text, position, words",
    [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("a&", 2, "missing"),
        ("a & ", 4, "missing"),
        ("|b", 0, "missing"),
        ("a&&b", 2, "missing"),
        ("a||b", 2, "missing"),
        ("a|&b", 2, "missing"),
        ("a&(b|)", 5, "missing"),
        ("a-b", 1, "unexpected character '-'"),
        ("bon,moa", 3, "unexpected character ','"),
        ("a&-b", 2, "unexpected character '-'"),
        ("a b", 2, "expected '&' or '|'"),
        ("(a", 0, "unclosed '('"),
        ("x&((a)", 2, "unclosed '('"),
        ("a&(b|(c)", 2, "unclosed '('"),
        ("a)", 1, "')'"),
        (")", 0, "')'"),
        ("(a))", 3, "')'"),
        ("a|)", 2, "')'"),
        ("()", 0, "empty parentheses"),
        ("a&( )", 2, "empty parentheses"),
    ],
)
def test_errors_report_exact_position(text, position, words):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    err = info.value
    assert err.position == position
    assert err.expression == text
    assert words in err.message
    assert f"position {position}" in err.message
    assert isinstance(err, InvalidRequest) and err.status == 400


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(ExpressionError) as info:
        parse("(" * 5000 + "a" + ")" * 5000)
    assert info.value.position < 5000


def test_validate_accepts_known():
    validate(parse("moa&(bon|self_consistency)&cot_reflection|mcts"), KNOWN)


def test_validate_names_the_unknown_slug_and_lists_known():
    with pytest.raises(UnknownApproach) as info:
        validate(parse("bon&(moa|nope)"), KNOWN)
    message = info.value.message
    assert "'nope'" in message
    for slug in KNOWN:
        assert slug in message
    assert info.value.status == 400
