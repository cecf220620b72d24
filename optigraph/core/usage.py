"""Token usage: summed over every upstream call a run makes."""

from __future__ import annotations

from typing import Any, TypedDict


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int
    calls: int


def empty_usage() -> Usage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "reasoning_tokens": 0, "calls": 0}


def add_usage(a: Usage | None, b: Usage | None) -> Usage:
    """Reducer for graph state: sums two usages (either may be missing)."""
    if not a:
        return dict(b) if b else empty_usage()  # type: ignore[return-value]
    if not b:
        return a
    return {k: a.get(k, 0) + b.get(k, 0) for k in empty_usage()}  # type: ignore[return-value]


def usage_from_response(usage: dict[str, Any] | None) -> Usage:
    """Reads an upstream `usage` object (missing fields count 0); one upstream call."""
    u = usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    details = u.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(u.get("total_tokens") or prompt + completion),
        "reasoning_tokens": int(details.get("reasoning_tokens") or 0),
        "calls": 1,
    }


def openai_usage(u: Usage) -> dict[str, Any]:
    """The OpenAI `usage` object for a response."""
    return {
        "prompt_tokens": u["prompt_tokens"],
        "completion_tokens": u["completion_tokens"],
        "total_tokens": u["total_tokens"],
        "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
    }
