"""sample: n candidate responses to the conversation from one logical LLM call.

One `LLM.chat(n=...)` request; where the backend cannot return n choices, the LLM client issues
the calls concurrently, so n samples cost one round either way. Samples whose call failed or that
came back empty are dropped; the node fails only when every sample failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.state import ApproachState, Candidate, candidate_text
from optigraph.nodes.common import candidates_from, generation_params

SampleNode = Callable[[ApproachState, Runtime[RunContext]], Awaitable[dict[str, Any]]]


def param_or_client(state: ApproachState, param: str, default: Any, *, client_key: str | None = None) -> Any:
    """An approach parameter when set, else the client's request value, else `default`."""
    value = (state.get("params") or {}).get(param)
    if value is not None:
        return value
    value = (state.get("request") or {}).get(client_key or param)
    return default if value is None else value


def is_usable(candidate: Candidate) -> bool:
    return bool(candidate_text(candidate).strip())


async def sample_candidates(
    state: ApproachState,
    runtime: Runtime[RunContext],
    *,
    n: int,
    node: str = "sample",
    messages: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Samples n candidates at the client's generation parameters (with `overrides`)."""
    llm = runtime.context.llm
    params = generation_params(state, **overrides)
    completion = await llm.chat(messages or state["messages"], node=node, n=n, partial=True, **params)
    candidates = candidates_from(completion)
    usable = [c for c in candidates if is_usable(c)]
    notes: list[str] = []
    if len(usable) < n:
        notes.append(f"{node}: {n - len(usable)} of {n} samples failed or came back empty")
    # All empty: keep them, so the approach still answers (with what the model said).
    return {"candidates": usable or candidates, "usage": completion.usage, "notes": notes}


def sample_node(*, count: str = "n", default_temperature: float = 1.0, node: str = "sample") -> SampleNode:
    """A node sampling `params[count]` candidates at `params["temperature"]`, else the client's
    temperature, else `default_temperature`."""

    async def sample(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        n = int((state.get("params") or {})[count])
        temperature = param_or_client(state, "temperature", default_temperature)
        return await sample_candidates(state, runtime, n=n, node=node, temperature=temperature)

    sample.__name__ = node
    return sample
