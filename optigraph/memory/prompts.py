"""What is stored of a run when the server keeps no prompt text (`store_prompts` off).

The run stays as metadata: its id, tenant, expression, model, status, times, token counts and
errors. Its request keeps the parameters (model, n, temperature...) but not the messages; its response
and its upstream calls keep usage, finish reasons and counts but not a single text. The recorder
applies this to every row it writes (memory/recorder.py); graphs then run without a checkpointer,
since graph state holds the conversation too (api/app.py).
"""

from __future__ import annotations

from typing import Any

# Request fields that carry text written by the client (or tools): never stored.
TEXT_FIELDS = frozenset({"messages", "prompt", "input", "tools", "functions", "response_format", "stop", "prediction"})
REMOVED = "[not stored]"


def request_metadata(request: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request without its messages and other text fields (how many messages, not what they said)."""
    if not isinstance(request, dict):
        return request
    out = {k: v for k, v in request.items() if k not in TEXT_FIELDS}
    if isinstance(request.get("messages"), list):
        out["message_count"] = len(request["messages"])
    return out


def response_metadata(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """A response (a run's or an upstream call's) without the text of its choices."""
    if not isinstance(response, dict):
        return response
    out = {k: v for k, v in response.items() if k not in ("choices", "content", "text")}
    choices = response.get("choices")
    if isinstance(choices, list):
        out["choices"] = [
            {k: c.get(k) for k in ("index", "finish_reason") if k in c} if isinstance(c, dict) else REMOVED
            for c in choices
        ]
    return out
