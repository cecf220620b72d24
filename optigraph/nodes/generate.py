"""The final LLM stage of an approach: one generation that streams to the client when it can."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.llm import Completion
from optigraph.core.state import ApproachState


async def generate_final(
    state: ApproachState,
    runtime: Runtime[RunContext],
    messages: list[dict[str, Any]],
    *,
    node: str,
    fields: Mapping[str, Any] | None = None,
    **params: Any,
) -> Completion:
    """Generates the answer the client receives; streams its tokens if this run streams this choice.

    `fields`: request fields passed on as one dict (see `LLM.chat`); `params`: the approach's own."""
    c = runtime.context
    return await c.llm.chat(
        messages, node=node, sink=c.sink, stream_choice=state.get("stream_choice"), fields=fields, **params
    )
