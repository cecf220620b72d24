"""The shipped problem set parses, every problem has a usable grader, and its answers are right."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from optigraph.evals.grading import grade, parse_number
from optigraph.evals.problems import (
    GRADERS,
    INSTRUCTIONS,
    ProblemError,
    load_problems,
    parse_problems,
    prompt_for,
    select_problems,
    shipped_problems_text,
)

PROBLEMS = load_problems()
BY_ID = {p.id: p for p in PROBLEMS}


def test_shipped_set_parses_with_a_grader_each() -> None:
    assert len(PROBLEMS) >= 40
    assert len(BY_ID) == len(PROBLEMS)
    assert len(shipped_problems_text().strip().splitlines()) == len(PROBLEMS)
    for p in PROBLEMS:
        assert p.grader in GRADERS and p.prompt and p.answer, p.id
        assert p.grader in INSTRUCTIONS
        if p.grader == "number":
            assert parse_number(p.answer) is not None, p.id
        if p.grader == "choice":
            assert p.choices and p.answer in p.choices, p.id
            assert all(f"{k}) {v}" in p.prompt for k, v in p.choices.items()), p.id
        if p.grader == "code":
            assert p.tests, p.id
    assert {p.category for p in PROBLEMS} >= {"arithmetic", "word", "logic", "code"}


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        ("arith-01", 47 * 23 - 156 / 12 + 89),
        ("arith-04", sum(range(61))),
        ("arith-07", pow(2, 20, 7)),
        ("arith-08", math.comb(7, 3)),
        ("arith-09", math.lcm(12, 18, 30)),
        ("arith-11", math.gcd(462, 1071)),
        ("word-01", 50 - 4 * 3 - 6 * 1.25),
        ("word-03", 480 - 0.35 * 480 - (480 - 0.35 * 480) / 4),
        ("word-06", 240 * 0.75 * 1.08),
        ("word-10", (86 - 2 * 30) / 2),
        ("word-11", 2000 * 1.05**3),
        ("logic-05", 5),
        ("logic-08", sum(str(i).count("7") for i in range(1, 101))),
        ("logic-10", 7.5),
    ],
)
def test_a_sample_of_answers(pid: str, expected: float) -> None:
    assert float(parse_number(BY_ID[pid].answer)) == pytest.approx(expected)


def test_logic_answers() -> None:
    assert BY_ID["logic-02"].answer == "Carol"
    assert BY_ID["logic-07"].answer == "D"  # "we are both knaves" can only be said by a knave next to a knight
    assert BY_ID["logic-09"].answer == "no" and 221 == 13 * 17


@pytest.mark.parametrize("pid", [p.id for p in PROBLEMS if p.grader == "code"])
async def test_code_reference_solutions_pass_their_tests(pid: str) -> None:
    p = BY_ID[pid]
    src = p.answer + "\n" + "\n".join(p.tests) + "\n"
    assert subprocess.run([sys.executable, "-c", src], capture_output=True, timeout=30).returncode == 0
    g = await grade(p, f"```python\n{p.answer}```")  # and through the grader (the sandbox when present)
    assert g.correct, g.detail


async def test_reference_answers_grade_as_right() -> None:
    for p in PROBLEMS:
        if p.grader == "code":
            continue  # above
        response = f"Let me think.\nFinal answer: {p.answer}"
        assert (await grade(p, response)).correct, p.id


def test_bad_lines_are_reported_with_where() -> None:
    with pytest.raises(ProblemError, match="x.jsonl:2: missing answer"):
        parse_problems('{"id": "a", "prompt": "p", "answer": "1"}\n{"id": "b", "prompt": "p"}', source="x.jsonl")
    with pytest.raises(ProblemError, match="unknown grader"):
        parse_problems('{"id": "a", "prompt": "p", "answer": "1", "grader": "vibes"}')
    with pytest.raises(ProblemError, match="needs 'tests'"):
        parse_problems('{"id": "a", "prompt": "p", "answer": "1", "grader": "code"}')
    with pytest.raises(ProblemError, match="duplicate id"):
        parse_problems('{"id": "a", "prompt": "p", "answer": "1"}\n{"id": "a", "prompt": "q", "answer": "2"}')
    with pytest.raises(ProblemError, match="not JSON"):
        parse_problems("{nope")


def test_user_file_defaults_and_extra_keys(tmp_path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text('{"id": 7, "prompt": "2+2?", "answer": 4, "source": "me"}\n\n', encoding="utf-8")
    (p,) = load_problems(f)
    assert (p.id, p.answer, p.grader, p.category, p.extra) == ("7", "4", "number", "general", {"source": "me"})
    assert prompt_for(p).startswith("2+2?\n\n") and prompt_for(p, instructions=False) == "2+2?"


def test_select_problems() -> None:
    words = select_problems(PROBLEMS, categories=["word"], limit=3)
    assert [p.id for p in words] == ["word-01", "word-02", "word-03"]
    assert [p.id for p in select_problems(PROBLEMS, ids=["logic-01", "code-02"])] == ["logic-01", "code-02"]


def test_reasoning_gym_generates_offline() -> None:
    pytest.importorskip("reasoning_gym")
    from optigraph.evals.problems import reasoning_gym_problems

    first = reasoning_gym_problems("gsm_symbolic", 3, seed=1)
    assert len(first) == 3 and all(p.grader == "number" and p.prompt for p in first)
    assert [p.prompt for p in reasoning_gym_problems("gsm_symbolic", 3, seed=1)] == [p.prompt for p in first]
    with pytest.raises(ProblemError, match="could not create"):
        reasoning_gym_problems("no_such_dataset", 1, seed=0)
