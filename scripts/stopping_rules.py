"""Exact accuracy and expected samples of the adaptive stopping rules, on a model of a noisy sampler.

Each sample is right with probability p; a wrong sample gives one of three wrong answers with
probabilities 0.5, 0.3 and 0.2 of the rest (wrong answers of a small model cluster: it makes the
same slip more often than a different one). Every sequence of answers up to the budget is enumerated
(no randomness), and each rule is run on it with optigraph's own vote and stopping code, in rounds of
`batch` as the approaches draw them.

    python scripts/stopping_rules.py            # the table in docs/eval.md
"""

from __future__ import annotations

import itertools

from optigraph.core.votes import StopRule, majority, should_stop, vote_margin

WRONG_SHARES = (0.5, 0.3, 0.2)
ANSWERS = ("right", "w1", "w2", "w3")


def rounds(budget: int, batch: int) -> list[int]:
    """Samples drawn after each round: batch, 2 x batch, ... up to the budget."""
    return list(range(batch, budget, batch)) + [budget]


def outcome(sequence: tuple[str, ...], rule: StopRule | None, budget: int, batch: int) -> tuple[bool, int]:
    """(the vote is right, samples drawn) for one sequence; `rule` None draws the whole budget."""
    stops = rounds(budget, batch) if rule is not None else [budget]
    for drawn in stops:
        drawn_answers = list(sequence[:drawn])
        result = majority(drawn_answers, drawn_answers)
        leader, runner_up = vote_margin(result)
        if rule is None or should_stop(leader, runner_up, drawn, budget, rule):
            return drawn_answers[result.winner] == "right", drawn
    raise AssertionError("the budget always stops")


def expected(p: float, rule: StopRule | None, budget: int = 5, batch: int = 2) -> tuple[float, float]:
    """(accuracy, mean samples) over every sequence of `budget` answers, weighted by its probability."""
    probability = dict(zip(ANSWERS, (p, *((1 - p) * s for s in WRONG_SHARES))))
    accuracy = samples = 0.0
    for sequence in itertools.product(ANSWERS, repeat=budget):
        weight = 1.0
        for answer in sequence:
            weight *= probability[answer]
        right, drawn = outcome(sequence, rule, budget, batch)
        accuracy += weight * right
        samples += weight * drawn
    return accuracy, samples


RULES: tuple[tuple[str, StopRule | None], ...] = (
    ("fixed (5 at once)", None),
    ("lead, min_lead 2 (default)", StopRule()),
    ("lead, min_lead 3", StopRule(min_lead=3)),
    ("beta 0.95", StopRule(kind="beta")),
)


def main() -> None:
    ps = (0.3, 0.45, 0.6, 0.75, 0.9)
    print("| rule | " + " | ".join(f"p = {p}" for p in ps) + " |")
    print("|---|" + "---:|" * len(ps))
    for name, rule in RULES:
        cells = []
        for p in ps:
            accuracy, samples = expected(p, rule)
            cells.append(f"{100 * accuracy:.1f}% / {samples:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
