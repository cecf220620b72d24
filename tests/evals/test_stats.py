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
        ("pal", "a", True),
        ("none", "a", True),
        ("pal", "b", True),
        ("none", "b", False),
        ("pal", "c", False),
        ("none", "c", True),
        ("pal", "d", False),
        ("none", "d", False),
        ("pal", "e", True),
        ("none", "e", False),
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
        result("none", "p1", True, 0),
        result("none", "p2", False, 0),
        result("none", "p1", False, 1),
        result("none", "p2", False, 1),
        result("pal", "p1", True, 0),
        result("pal", "p2", True, 0),
        result("pal", "p1", True, 1),
        result("pal", "p2", True, 1),
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


def test_svg_plot_draws_each_approach_with_its_interval(tmp_path):
    import xml.etree.ElementTree as ET

    from optigraph.evals.report import svg_plot

    results = [result("none", "p1", True), result("none", "p2", False), result("pal", "p1", True)]
    for r in results:
        r.completion_tokens = 300 if r.approach == "none" else 600
    summaries = summarize(results, {})
    svg_plot(summaries, tmp_path / "plot.svg", title="t & co")
    root = ET.parse(tmp_path / "plot.svg").getroot()  # well-formed, title escaped
    ns = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in root.iter(ns + "text")]
    assert "none (1/2)" in labels and "pal (1/1)" in labels and "t & co" in labels
    circles = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(ns + "circle")]
    assert len(circles) == 2 and circles[0][0] < circles[1][0]  # more tokens, further right
    assert circles[1][1] < circles[0][1]  # 100% above 50%
    assert len(list(root.iter(ns + "polyline"))) == 1  # the front: none, then pal
