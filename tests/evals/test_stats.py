"""Wilson intervals and paired comparisons, against values worked out by hand or published."""

from __future__ import annotations

import pytest

from optigraph.evals.report import ProblemResult, comparisons, format_comparisons, pareto_front, summarize
from optigraph.evals.stats import mcnemar_exact_p, paired, wilson_interval


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # the "rule of three"-like bound at 0/n
        (10, 10, 0.7225, 1.0),
        (3, 6, 0.1876, 0.8124),
        (45, 60, 0.6281, 0.8425),
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), example: 81/263
    ],
)
def test_wilson_interval(correct, total, low, high):
    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=5e-4)
    assert 0.0 <= got[0] <= correct / total <= got[1] <= 1.0


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    narrow, wide = wilson_interval(60, 100), wilson_interval(6, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(6, 0) == pytest.approx(2 / 64)  # both tails of Binomial(6, 1/2) at 0
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact_p(2, 5) == mcnemar_exact_p(5, 2)


def test_paired_counts_only_problems_both_answered():
    rows = [
        ("pal", "a", True), ("none", "a", True),
        ("pal", "b", True), ("none", "b", False),
        ("pal", "c", False), ("none", "c", True),
        ("pal", "d", False), ("none", "d", False),
        ("pal", "e", True), ("none", "e", False),
        ("pal", "only-pal", True),  # the baseline never ran it: not a pair
        ("other", "a", False),
    ]
    c = paired("pal", "none", rows)
    assert (c.both, c.neither, c.only_approach, c.only_baseline) == (1, 1, ("b", "e"), ("c",))
    assert c.pairs == 5 and c.p_value == pytest.approx(1.0)


def result(approach: str, pid: str, correct: bool, trial: int = 0) -> ProblemResult:
    return ProblemResult(
        approach=approach, model="m", id=pid, category="x", grader="number", expected="1", correct=correct, trial=trial
    )


def test_trials_pair_problem_by_problem_and_report_per_trial():
    results = [
        result("none", "p1", True, 0), result("none", "p2", False, 0),
        result("none", "p1", False, 1), result("none", "p2", False, 1),
        result("pal", "p1", True, 0), result("pal", "p2", True, 0),
        result("pal", "p1", True, 1), result("pal", "p2", True, 1),
    ]
    (none, pal) = summarize(results, {})
    assert none.trial_accuracies == (0.5, 0.0) and pal.trial_accuracies == (1.0, 1.0)
    assert (pal.correct, pal.problems) == (4, 4) and pal.interval == wilson_interval(4, 4)
    (c,) = comparisons(results, "none")
    assert c.only_approach == ("p2", "p1#1", "p2#1") and c.only_baseline == () and c.both == 1
    text = format_comparisons([c])
    assert "pal right, none wrong: p2, p1#1, p2#1" in text and "none right, pal wrong: -" in text
    assert comparisons(results, "missing") == []


def test_pareto_front():
    points = [(100, 0.5), (300, 0.9), (200, 0.4), (400, 0.9), (50, 0.2)]
    assert pareto_front(points) == [(50, 0.2), (100, 0.5), (300, 0.9)]
