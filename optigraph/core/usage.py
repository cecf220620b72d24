"""Token usage, and the one definition of a run's usage.

A run's usage (the response's `usage` and `optigraph.upstream_calls`, the stored run's token and
`calls` columns, streamed or not, completed, failed, cancelled or interrupted) is the sum over the
upstream calls the run made, as recorded in `upstream_calls`:

- `calls` counts every upstream request sent: each attempt is one call, so a retried request counts
  once per attempt, and failed and cancelled attempts count too (they may have cost the upstream
  work, and they count against the run's `max_upstream_calls`);
- the token counts are what the upstream reported for each call; a failed attempt reports none.

The LLM client of the run keeps this tally as it records each call (`LLM.spent`), so it holds
whatever a node did with the answer, even when the node then raised. The graph state's own `usage`
channel is the approach's accounting of the answers it received and is not the run's usage.
"""

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
    get_a, get_b = a.get, b.get
    return {
        "prompt_tokens": get_a("prompt_tokens", 0) + get_b("prompt_tokens", 0),
        "completion_tokens": get_a("completion_tokens", 0) + get_b("completion_tokens", 0),
        "total_tokens": get_a("total_tokens", 0) + get_b("total_tokens", 0),
        "reasoning_tokens": get_a("reasoning_tokens", 0) + get_b("reasoning_tokens", 0),
        "calls": get_a("calls", 0) + get_b("calls", 0),
    }


def one_call(usage: Usage) -> Usage:
    """The usage of one recorded upstream call (an attempt): its tokens, and `calls` = 1."""
    return {**usage, "calls": 1}


def usage_from_rows(rows: list[dict[str, Any]]) -> Usage:
    """The usage that stored upstream-call rows (or CallRecords as dicts) sum to."""
    total = empty_usage()
    for row in rows:
        prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
        total = add_usage(
            total,
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "reasoning_tokens": int(row.get("reasoning_tokens") or 0),
                "calls": 1,
            },
        )
    return total


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
