"""The vote node: majority vote over the candidates (the rules are in optigraph.core.votes)."""

from __future__ import annotations

from typing import Any

from optigraph.core.state import ApproachState, sorted_candidates
from optigraph.core.votes import SIMILARITY_THRESHOLD, vote_candidates, vote_summary
from optigraph.nodes.common import answer_of


async def vote(state: ApproachState) -> dict[str, Any]:
    """Votes over the candidates' tool calls or extracted answers; the winning group's first full
    response (its whole message) is the answer. The threshold for free text is
    `params["similarity_threshold"]` (default 0.8)."""
    candidates = sorted_candidates(state)
    threshold = (state.get("params") or {}).get("similarity_threshold")
    threshold = SIMILARITY_THRESHOLD if threshold is None else float(threshold)
    result = vote_candidates(candidates, threshold=threshold)
    top = result.top
    return {
        "answers": [answer_of(candidates[result.winner])],
        "notes": [f"vote: {len(top.members)} of {len(candidates)} agree ({vote_summary(result)})"],
    }
