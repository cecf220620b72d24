"""rate: an LLM scores ONE candidate from 0 to 10, as a `Send` branch (one task per candidate).

The rater sees the conversation with the candidate as the assistant's turn and is asked, in a
final user turn, for a bare number. Ratings are read loosely ("Rating: 7/10", "**8**", "8.5",
"I'd give it a 9 out of 10"); a rating that cannot be read, or whose call failed, is recorded as
None with a note, never silently as 0.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.core.context import RunContext
from optigraph.core.judgments import parse_rating
from optigraph.core.state import (
    ApproachState,
    Candidate,
    Score,
    candidate_text,
    sorted_candidates,
)
from optigraph.errors import UpstreamError
from optigraph.nodes.common import branch_payload, helper_params

RATING_REQUEST = (
    "Rate the quality of your previous response to my request on a scale from 0 to 10, where 0 "
    "means wrong or useless and 10 means correct, complete and helpful. Judge correctness first, "
    "then completeness and clarity. Reply with the rating only: a single number from 0 to 10."
)

DEFAULT_TEMPERATURE = 0.1
DEFAULT_MAX_TOKENS = 256


def rating_messages(messages: list[dict[str, Any]], candidate: Candidate) -> list[dict[str, Any]]:
    """The conversation, the candidate as the assistant's answer, then the rating request."""
    return [
        *messages,
        {"role": "assistant", "content": candidate_text(candidate)},
        {"role": "user", "content": RATING_REQUEST},
    ]


def rate_each(state: ApproachState, *, node: str = "rate") -> list[Send]:
    """Fan-out: one `rate` branch per candidate, carrying what the branch needs."""
    return [
        Send(node, branch_payload(state, {"index": c.get("index", i), "candidate": c}))
        for i, c in enumerate(sorted_candidates(state))
    ]


async def rate(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Rates `state["branch"]["candidate"]`; writes one Score (and usage, and a note on failure)."""
    branch = state["branch"]
    index: int = branch["index"]
    params = state.get("params") or {}
    call = helper_params(
        state,
        temperature=params.get("rating_temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("rating_max_tokens", DEFAULT_MAX_TOKENS),
    )
    try:
        completion = await runtime.context.llm.chat(
            rating_messages(state["messages"], branch["candidate"]), node="rate", **call
        )
    except UpstreamError as exc:
        score: Score = {"index": index, "score": None, "raw": ""}
        return {"scores": [score], "notes": [f"rate: rating candidate {index} failed: {exc.message}"]}
    raw = completion.text
    value = parse_rating(raw)
    notes = [] if value is not None else [f"rate: no rating found for candidate {index} in {raw[:120]!r}"]
    return {"scores": [{"index": index, "score": value, "raw": raw}], "usage": completion.usage, "notes": notes}
