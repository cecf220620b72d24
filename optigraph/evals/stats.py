"""How sure an eval can be: Wilson intervals for accuracies, and paired comparisons of two approaches
on the same problems (McNemar's exact test on the problems where they differ).

An accuracy of 6/10 and one of 60/100 are the same number and very different evidence; the interval
says which. Two approaches run on the same problems are compared on those problems: the ones only
the first got right and the ones only the second got right decide, the ones both (or neither) got
right say nothing about which is better.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion `correct / total` (95% by default); (0, 1) for
    no trials. Unlike the normal approximation it stays inside [0, 1] and is sound at 0/n and n/n."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be within 0..{total}, got {correct}")
    p = correct / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact at the ends (no rounding below 0/n...)
    high = 1.0 if correct == total else min(1.0, centre + half)  # ...or above n/n)
    return low, high


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good", each discordant problem is a fair coin,
    so the smaller count follows Binomial(only_a + only_b, 1/2). 1.0 when there are none."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """`approach` against `baseline` on the problems both answered (matched by problem and trial)."""

    approach: str
    baseline: str
    both: int  # right in both
    neither: int
    only_approach: tuple[str, ...]  # problem ids (with the trial when there are several) only `approach` got right
    only_baseline: tuple[str, ...]

    @property
    def pairs(self) -> int:
        return self.both + self.neither + len(self.only_approach) + len(self.only_baseline)

    @property
    def p_value(self) -> float:
        return mcnemar_exact_p(len(self.only_approach), len(self.only_baseline))


def paired(
    approach: str,
    baseline: str,
    outcomes: Iterable[tuple[str, str, bool]],
) -> PairedComparison:
    """Compares two approaches from (approach, key, correct) rows, where `key` names one problem in
    one trial; only keys both approaches answered count."""
    right: dict[str, dict[str, bool]] = {approach: {}, baseline: {}}
    for name, key, correct in outcomes:
        if name in right:
            right[name][key] = correct
    keys = [k for k in right[approach] if k in right[baseline]]
    a, b = right[approach], right[baseline]
    return PairedComparison(
        approach=approach,
        baseline=baseline,
        both=sum(a[k] and b[k] for k in keys),
        neither=sum(not a[k] and not b[k] for k in keys),
        only_approach=tuple(k for k in keys if a[k] and not b[k]),
        only_baseline=tuple(k for k in keys if b[k] and not a[k]),
    )
