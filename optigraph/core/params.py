"""Per-backend normalisation of request parameters, so a request does not fail upstream for a
parameter the backend names differently or refuses."""

from __future__ import annotations

from typing import Any

from optigraph.core.backend import Capabilities

# Sampling parameters reasoning models (o1, o3, o4-mini, gpt-5) reject.
SAMPLING_ONLY = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)


def normalise(body: dict[str, Any], caps: Capabilities) -> dict[str, Any]:
    """Returns a copy of `body` the backend accepts. Never mutates its argument."""
    out = dict(body)
    if caps.max_tokens_field == "max_completion_tokens":
        if "max_tokens" in out:
            limit = out.pop("max_tokens")
            out.setdefault("max_completion_tokens", limit)
    elif "max_completion_tokens" in out:
        limit = out.pop("max_completion_tokens")
        out.setdefault("max_tokens", limit)
    if not caps.temperature:
        for key in SAMPLING_ONLY:
            out.pop(key, None)
    if not caps.logprobs:
        out.pop("logprobs", None)
        out.pop("top_logprobs", None)
    if not caps.system_messages and any(m.get("role") == "system" for m in out.get("messages", ())):
        out["messages"] = [{**m, "role": "developer"} if m.get("role") == "system" else m for m in out["messages"]]
    return out
