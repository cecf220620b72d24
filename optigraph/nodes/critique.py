"""critique: one LLM call weighing all candidates' strengths, weaknesses and errors in free text.

The critique is written to the `critique` key of `CritiqueState`; if the call fails the run goes on
without one (noted), since aggregation can still merge the candidates alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import (
    ApproachState,
    Candidate,
    candidate_text,
    sorted_candidates,
)
from optigraph.errors import UpstreamError
from optigraph.nodes.common import helper_params

CANDIDATE_BLOCK = "Candidate {number}:\n{text}"

CRITIQUE_PROMPT = """Original query: {query}

Here are {count} candidate responses to the query:

{candidates}

Critique each candidate in turn: what it gets right, what it gets wrong or leaves out, and any \
errors of fact or reasoning. Be specific and concise. Do not write a new response."""

DEFAULT_TEMPERATURE = 0.1
DEFAULT_MAX_TOKENS = 512


class CritiqueState(ApproachState, total=False):
    critique: str  # the critique of the current candidates ("" when it failed)


def format_candidates(candidates: Sequence[Candidate]) -> str:
    return "\n\n".join(CANDIDATE_BLOCK.format(number=i + 1, text=candidate_text(c)) for i, c in enumerate(candidates))


def critique_messages(messages: list[dict[str, Any]], candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    prompt = CRITIQUE_PROMPT.format(
        query=last_user_text(messages), count=len(candidates), candidates=format_candidates(candidates)
    )
    return replace_last_user(messages, prompt)


async def critique(state: CritiqueState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Critiques every candidate in one call."""
    params = state.get("params") or {}
    call = helper_params(
        state,
        temperature=params.get("critique_temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("critique_max_tokens", DEFAULT_MAX_TOKENS),
    )
    messages = critique_messages(state["messages"], sorted_candidates(state))
    try:
        completion = await runtime.context.llm.chat(messages, node="critique", **call)
    except UpstreamError as exc:
        return {"critique": "", "notes": [f"critique: failed, aggregating without it: {exc.message}"]}
    return {"critique": completion.text, "usage": completion.usage}
