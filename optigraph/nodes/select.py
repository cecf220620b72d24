"""select: the candidate with the highest score becomes the answer (no LLM).

Ties go to the earliest candidate. Missing scores (None: a failed or unreadable rating) are
ignored unless every score is missing, in which case the first candidate is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optigraph.core.state import ApproachState, Candidate, Score, sorted_candidates
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


async def select(state: ApproachState) -> dict[str, Any]:
    """Writes the best candidate as the answer, and a note of the scores it was chosen by."""
    candidates = sorted_candidates(state)
    scores = state.get("scores") or []
    pos = best_index(candidates, scores)
    chosen = candidates[pos]
    listed = ", ".join(f"{s.get('index')}: {s.get('score')}" for s in sorted(scores, key=lambda s: s.get("index", 0)))
    return {
        "answers": [answer_of(chosen)],
        "notes": [f"select: candidate {chosen.get('index', pos)} (scores {listed or 'none'})"],
    }
