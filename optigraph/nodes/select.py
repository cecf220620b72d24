"""select: the candidate with the highest score becomes the answer (no LLM).

Ties go to the earliest candidate. Missing scores (None: a failed or unreadable rating) are
ignored unless every score is missing, in which case the first candidate is chosen.

With `selection="weighted_vote"` (bon's default) the candidates are first grouped by the answer they
reach (core/votes.py: extracted answers, tool calls, similar free text; answers cut at max_tokens
do not vote while others do) and the group whose scores add up highest wins; its best-scored member is
the answer. A model rating its own answers gives nearly every one the same score (a 1.5B model gave every
candidate 8 or 9, right or wrong: docs/eval.md), and the first of equal scores is then an arbitrary
pick; answers that several candidates reach are more often right (self-consistency), so summed scores
keep the rating's say where it discriminates and fall back to the majority where it does not
(verifier-weighted voting, as in Li et al., arXiv 2206.02336).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optigraph.core.state import ApproachState, Candidate, Score, sorted_candidates
from optigraph.core.votes import vote_candidates
from optigraph.nodes.common import answer_of


def best_index(candidates: Sequence[Candidate], scores: Sequence[Score]) -> int:
    """Position in `candidates` of the best-scored one (first on ties, first if none scored)."""
    if not candidates:
        raise ValueError("no candidates to select from")
    by_index = {s.get("index"): s.get("score") for s in scores}
    best, best_score = 0, None
    for pos, c in enumerate(candidates):
        score = by_index.get(c.get("index", pos))
        if score is not None and (best_score is None or score > best_score):
            best, best_score = pos, score
    return best


def weighted_vote_index(candidates: Sequence[Candidate], scores: Sequence[Score]) -> tuple[int, str]:
    """Position in `candidates` of the best-scored member of the answer group with the highest summed
    score (more members, then the earlier group, on ties), and a note of the groups' totals."""
    if not candidates:
        raise ValueError("no candidates to select from")
    by_index = {s.get("index"): s.get("score") for s in scores}
    points = [by_index.get(c.get("index", pos)) for pos, c in enumerate(candidates)]
    votes = vote_candidates(candidates)
    best: tuple[float, int] | None = None
    winner: tuple[int, ...] = ()
    totals = []
    for group in votes.groups:
        total = sum(points[p] or 0 for p in group.members)
        totals.append(f"{group.key[:40]!r} {total:g} ({len(group.members)})")
        if best is None or (total, len(group.members)) > best:
            best, winner = (total, len(group.members)), group.members
    members = list(winner)
    pos = members[best_index([candidates[p] for p in members], scores)]
    return pos, "; ".join(totals)


async def select(state: ApproachState) -> dict[str, Any]:
    """Writes the best candidate as the answer, and a note of the scores it was chosen by (the
    approach's `selection` parameter: "score", the default, or "weighted_vote")."""
    candidates = sorted_candidates(state)
    scores = state.get("scores") or []
    listed = ", ".join(f"{s.get('index')}: {s.get('score')}" for s in sorted(scores, key=lambda s: s.get("index", 0)))
    how = (state.get("params") or {}).get("selection", "score")
    if how == "weighted_vote" and len(candidates) > 1:
        pos, totals = weighted_vote_index(candidates, scores)
        note = f"select: candidate {candidates[pos].get('index', pos)} by weighted vote ({totals}; scores {listed or 'none'})"
    else:
        pos = best_index(candidates, scores)
        note = f"select: candidate {candidates[pos].get('index', pos)} (scores {listed or 'none'})"
    return {"answers": [answer_of(candidates[pos])], "notes": [note]}
