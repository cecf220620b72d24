"""The graders: numbers (commas, units, currency, boxed, fractions), exact text, choice letters, code."""

from __future__ import annotations

from fractions import Fraction
from functools import partial

import pytest

from optigraph.evals import grading
from optigraph.evals.grading import (
    choice_letter,
    extract_code,
    grade,
    grade_choice,
    grade_exact,
    grade_number,
    parse_number,
    run_tests,
)
from optigraph.evals.problems import Problem
from optigraph.sandbox import run_python


def number(answer: str) -> Problem:
    return Problem(id="n", category="t", prompt="?", answer=answer, grader="number")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", 1234),
        ("$1,200.50", Fraction("1200.5")),
        ("25%", 25),
        ("7.5 degrees", Fraction("7.5")),
        ("x = 12", 12),
        ("3/4", Fraction(3, 4)),
        ("\\frac{61}{2}", Fraction(61, 2)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("\u221265", -65),
        ("**42**", 42),
        ("30.5\\text{ dollars}", Fraction("30.5")),
        ("no number", None),
    ],
)
def test_parse_number(text: str, value: object) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "response",
    [
        "Step 1... so 1000 + 200 = 1200.\nFinal answer: 1,200",
        "The total is \\boxed{1200}.",
        "The answer is $1,200.",
        "#### 1200",
        "Final answer: 1200 dollars",
        "Final answer: 1200.00",
        "We get 1199 then add 1, giving 1200",  # the last number
        "<think>maybe 17</think>Final answer: 1200",
        "So, the final answer is: Final answer: 1200",
    ],
)
def test_number_right(response: str) -> None:
    g = grade_number(number("1200"), response, use_math_verify=False)
    assert g.correct, g
    assert g.method == "numeric"


@pytest.mark.parametrize(
    "response", ["Final answer: 1201", "The answer is 12,000.", "I do not know.", "<think>1200</think>"]
)
def test_number_wrong(response: str) -> None:
    assert not grade_number(number("1200"), response, use_math_verify=False).correct


def test_number_decimals_and_fractions() -> None:
    assert grade_number(number("30.5"), "Final answer: $30.50", use_math_verify=False).correct
    assert grade_number(number("0.75"), "\\boxed{\\frac{3}{4}}", use_math_verify=False).correct
    assert grade_number(number("-65"), "Final answer: -65", use_math_verify=False).correct
    assert not grade_number(number("-65"), "Final answer: 65", use_math_verify=False).correct


def test_number_with_math_verify() -> None:
    pytest.importorskip("math_verify")
    # Our own reading cannot compare a square root; math-verify can.
    g = grade_number(number("3\\sqrt{2}"), "So the side is \\boxed{\\sqrt{18}}.", use_math_verify=True)
    assert g.correct and g.method == "math_verify"
    assert not grade_number(number("3\\sqrt{2}"), "\\boxed{4}", use_math_verify=True).correct


def test_a_non_numeric_expected_answer_is_not_compared_by_its_first_number() -> None:
    assert not grade_number(number("3\\sqrt{2}"), "Final answer: 3", use_math_verify=False).correct
    assert grade_number(number("3\\sqrt{2}"), "\\boxed{3\\sqrt{2}}", use_math_verify=False).correct
    assert grade_number(number("\\frac{3}{4}"), "Final answer: 0.75", use_math_verify=False).correct
    assert grade_number(number("25%"), "Final answer: 25", use_math_verify=False).correct


def test_exact() -> None:
    p = Problem(id="e", category="t", prompt="?", answer="Carol", grader="exact", aliases=("Caroline",))
    assert grade_exact(p, "Final answer: Carol").correct
    assert grade_exact(p, "Final answer: **carol**.").correct
    assert grade_exact(p, "The final answer is: **Final answer:** Carol").correct
    assert grade_exact(p, "Final answer: Carol owns the dog.").correct  # short answer containing it
    assert grade_exact(p, "Reasoning...\nCaroline").correct  # an alias, on the last line
    assert not grade_exact(p, "Final answer: Alice").correct
    long = "Final answer: it could be Alice or Bob or maybe Carol, hard to say"
    assert not grade_exact(p, long).correct  # a long answer is not searched


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B) All bloops", "B"),
        ("**B**", "B"),
        ("Option B", "B"),
        ("b", "B"),
        ("a cat", None),
        ("All bloops are lazzies", "B"),
        ("none of them", None),
    ],
)
def test_choice_letter(answer: str, letter: str | None) -> None:
    assert choice_letter(answer, {"A": "No bloops", "B": "All bloops are lazzies", "C": "x", "D": "y"}) == letter


def test_choice() -> None:
    p = Problem(id="c", category="t", prompt="?", answer="D", grader="choice")
    assert grade_choice(p, "A is a knave, so...\nFinal answer: D").correct
    assert grade_choice(p, "The answer is (D).").correct
    assert grade_choice(p, "So, the final answer is: Final answer: D").correct
    g = grade_choice(p, "Final answer: C")
    assert not g.correct and g.answer == "C"
    assert not grade_choice(p, "I cannot decide.").correct


CODE = Problem(
    id="k",
    category="code",
    prompt="?",
    answer="",
    grader="code",
    tests=("assert add(2, 3) == 5", "assert add(-1, 1) == 0"),
)


def test_extract_code_prefers_the_last_block_with_a_def() -> None:
    text = "```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nprint(add(1, 2))\n```"
    assert extract_code(text) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def add(a, b):\n    return a + b") is not None  # no fence, but Python
    assert extract_code("It adds the numbers.") is None


async def test_code_passes_and_fails() -> None:
    right = await grade(CODE, "Here:\n```python\ndef add(a, b):\n    return a + b\n```")
    assert right.correct and right.method == "code"
    wrong = await grade(CODE, "```python\ndef add(a, b):\n    return a - b\n```")
    assert not wrong.correct and "AssertionError" in (wrong.detail or "")
    broken = await grade(CODE, "```python\ndef add(a, b)\n    return a + b\n```")
    assert not broken.correct and "SyntaxError" in (broken.detail or "")
    none = await grade(CODE, "Sorry, no code.")
    assert not none.correct and none.detail == "no code found"


async def test_code_that_hangs_is_stopped() -> None:
    run = await run_tests("def add(a, b):\n    while True:\n        pass\n", CODE.tests, timeout_s=1.0)
    assert not run.ok and "timed out" in (run.detail or "")


async def test_code_is_never_run_without_the_sandbox_layers_its_level_requires(tmp_path, monkeypatch) -> None:
    # a kernel without namespaces and Landlock (the hook off too): only the level's check stops the write
    monkeypatch.setattr(
        grading, "run_python", partial(run_python, withhold_layers=("namespaces", "landlock"), audit_guard=False)
    )
    sentinel = tmp_path / "ran.txt"
    response = f"```python\ndef add(a, b):\n    return a + b\nopen({str(sentinel)!r}, 'w').write('ran')\n```"
    refused = await grade(CODE, response)
    assert not refused.correct and not sentinel.exists()
    assert (refused.detail or "").startswith("not run: sandbox level 'strict' lacks namespaces")
    assert "landlock (withheld (testing))" in (refused.detail or "")
    ran = await grade(CODE, response, sandbox_level="minimal")  # the explicit lower level
    assert ran.correct and sentinel.read_text() == "ran"


async def test_empty_response_is_wrong() -> None:
    for text in (None, "", "   "):
        g = await grade(number("1"), text)
        assert not g.correct and g.detail == "empty response"
