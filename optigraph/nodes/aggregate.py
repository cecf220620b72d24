"""aggregate: one LLM call merging the candidates (and their critique) into a new final answer.

It is the last stage of the approaches that use it, so it streams to the client when the run does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import Candidate, sorted_candidates
from optigraph.nodes.common import answer_of, generation_params
from optigraph.nodes.critique import CritiqueState, format_candidates
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import param_or_client

AGGREGATE_PROMPT = """Original query: {query}

Here are {count} candidate responses to the query:

{candidates}

Critique of the candidates:
{critique}

Using the candidates and the critique, write the best possible response to the original query: \
keep what is correct, fix what is wrong, add what is missing. Reply with that response only, \
addressed to the original query, without mentioning the candidates or the critique."""

AGGREGATE_PROMPT_UNCRITIQUED = """Original query: {query}

Here are {count} candidate responses to the query:

{candidates}

Using the candidates, write the best possible response to the original query: keep what is \
correct, fix what is wrong, add what is missing. Reply with that response only, addressed to the \
original query, without mentioning the candidates."""

DEFAULT_TEMPERATURE = 0.1


def aggregate_messages(
    messages: list[dict[str, Any]], candidates: Sequence[Candidate], critique: str
) -> list[dict[str, Any]]:
    template = AGGREGATE_PROMPT if critique.strip() else AGGREGATE_PROMPT_UNCRITIQUED
    prompt = template.format(
        query=last_user_text(messages),
        count=len(candidates),
        candidates=format_candidates(candidates),
        critique=critique.strip(),
    )
    return replace_last_user(messages, prompt)


async def aggregate(state: CritiqueState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Writes the final answer from the candidates and `state["critique"]` (if any)."""
    temperature = param_or_client(state, "aggregate_temperature", DEFAULT_TEMPERATURE, client_key="temperature")
    messages = aggregate_messages(state["messages"], sorted_candidates(state), state.get("critique") or "")
    completion = await generate_final(
        state, runtime, messages, node="aggregate", **generation_params(state, temperature=temperature)
    )
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}
