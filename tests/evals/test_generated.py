"""The generated multi-step problems: deterministic, and every answer re-derived here by a formula of
the test's own from the numbers in the prompt (not the generator's code)."""

from __future__ import annotations

import math
import re

import pytest

from optigraph.evals.generated import CATEGORY, DEFAULT_COUNT, TEMPLATES, default_problems, generate
from optigraph.evals.grading import grade
from optigraph.evals.problems import load_problems

PROBLEMS = generate()


def independent(template: str, v: dict[str, int]) -> float:
    """The answer worked out step by step, as a person would from the story."""
    if template == "boxes":
        made = v["trays"] * v["per"]
        left = made - v["morning"] - v["afternoon"]
        return left / v["box"]
    if template == "savings":
        weekly = v["rate"] * v["hours"] - v["food"] - v["transport"]
        return weekly * v["weeks"]
    if template == "discount":
        sale = v["price"] * (1 - v["off"] / 100)
        return v["count"] * (sale - v["coupon"])
    if template == "average_speed":
        return (v["v1"] * v["t1"] + v["v2"] * v["t2"]) / (v["t1"] + v["t2"])
    if template == "ages":
        cousin = v["age"] / 2 + v["older"]
        return v["age"] + cousin + 2 * v["years"]
    if template == "fence":
        return ((v["length"] + v["width"]) * 2 - v["gate"]) * v["cost"]
    if template == "warehouse":
        return v["start"] + v["arrive"] - v["ship"] * v["days"]
    if template == "bus":
        students = v["classes"] * v["size"]
        return students * (100 - v["bus"]) / 100 - v["absent"]
    if template == "flour":
        return math.ceil(v["cups"] * v["cookies"] / v["batch"] / v["bag"])
    if template == "change":
        adults = v["people"] - v["children"]
        return v["paid"] - adults * v["adult"] - v["children"] * v["child"]
    if template == "reading":
        pages_left = v["pages"] - v["first"] * v["days"]
        return v["days"] + math.ceil(pages_left / v["then"])
    if template == "pencils":
        needed = v["each"] * v["students"]
        return -needed % v["pack"]
    raise AssertionError(f"no formula for {template}")


def test_deterministic_and_seeded():
    assert [p.to_dict() for p in generate()] == [p.to_dict() for p in PROBLEMS]
    assert [p.prompt for p in generate(seed=7)] != [p.prompt for p in PROBLEMS]
    assert len(PROBLEMS) == DEFAULT_COUNT >= 100
    assert len({p.id for p in PROBLEMS}) == len(PROBLEMS) and len({p.prompt for p in PROBLEMS}) == len(PROBLEMS)
    assert {p.extra["template"] for p in PROBLEMS} == {t.name for t in TEMPLATES}


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_every_answer_is_verified_independently(problem):
    v = problem.extra["values"]
    expected = independent(problem.extra["template"], v)
    assert expected == int(expected) and expected >= 0, "answers are whole and not negative"
    assert int(problem.answer) == expected
    numbers = {int(n) for n in re.findall(r"\d+", problem.prompt)}
    assert set(v.values()) <= numbers, "every number the answer uses is in the story"
    assert problem.category == CATEGORY and problem.grader == "number"


async def test_the_grader_accepts_the_answer_and_rejects_a_near_miss():
    p = PROBLEMS[0]
    assert (await grade(p, f"Final answer: {p.answer}")).correct
    assert not (await grade(p, f"Final answer: {int(p.answer) + 1}")).correct


def test_default_set_has_the_shipped_problems_and_the_generated_ones():
    problems = default_problems()
    categories = {p.category for p in problems}
    assert categories >= {"arithmetic", "word", "logic", "code", CATEGORY, "commonsense", "factual"}
    assert len([p for p in problems if p.category == CATEGORY]) >= 100
    assert len([p for p in problems if p.category in ("commonsense", "factual")]) >= 30
    assert len({p.id for p in problems}) == len(problems)
    assert [p.id for p in problems[: len(load_problems())]] == [p.id for p in load_problems()]
