"""Chat answers shaped as a Responses API `response` object, and a stored run read back as one.

A response is a run: its id is `resp_<run id>`; the run stores the chat body it was served as, with
the original Responses request under `optigraph_responses` (what GET /v1/responses/{id} and
`previous_response_id` read back). Each choice becomes output items: a `message` with one
`output_text` part when it has text, then one `function_call` item per tool call. An expression with
several branches (`moa|bon`) answers one message per branch.
"""

from __future__ import annotations

import time
from typing import Any

RESPONSES_KEY = "optigraph_responses"  # where a run's request keeps the Responses request it came from
ID_PREFIX = "resp_"
# How a stored run's status reads as a response's.
RUN_STATUS = {
    "running": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "failed",
}


def response_id(run_id: str) -> str:
    return ID_PREFIX + run_id


def run_id_of(response_id_: str) -> str | None:
    """The run id inside a response id, or None when it is not one."""
    return response_id_[len(ID_PREFIX) :] if response_id_.startswith(ID_PREFIX) and len(response_id_) > 5 else None


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, *, status: str = "completed") -> dict[str, Any]:
    """An assistant message item; `text` None: no content part yet (as a stream first adds it)."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call: dict[str, Any], *, status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.get("id") or item_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def output_items(choices: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The output items of a run's answers (chat `choices`, or stored answers)."""
    items: list[dict[str, Any]] = []
    for choice in choices:
        message = choice.get("message") or {}
        text = message.get("content") or ""
        calls = message.get("tool_calls") or []
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        if text or not calls:
            items.append(message_item(f"msg_{run_id}_{len(items)}", text, status=status))
        for call in calls:
            items.append(function_call_item(f"fc_{run_id}_{len(items)}", call))
    return items


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat `usage` in the Responses shape."""
    if not usage:
        return None
    details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or 0),
    }


def response_object(
    request: dict[str, Any],
    *,
    run_id: str,
    created_at: float,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    optigraph: dict[str, Any] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A `response` object: `request` is the client's Responses request, echoed where OpenAI echoes it."""
    text = request.get("text") or {}
    incomplete = status == "completed" and any(item.get("status") == "incomplete" for item in output)
    out = {
        "id": response_id(run_id),
        "object": "response",
        "created_at": int(created_at),
        "status": "incomplete" if incomplete else status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model or request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }
    if optigraph is not None:
        out["optigraph"] = optigraph
    return out


def from_chat(request: dict[str, Any], chat: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The response of a finished chat completion (the runner's response body)."""
    return response_object(
        request,
        run_id=run_id,
        created_at=chat.get("created") or time.time(),
        status="completed",
        output=output_items(chat.get("choices") or [], run_id),
        usage=response_usage(chat.get("usage")),
        optigraph=chat.get("optigraph"),
        model=chat.get("model"),
    )


def from_run(row: dict[str, Any]) -> dict[str, Any]:
    """A stored run read back as its response (GET /v1/responses/{id})."""
    request = (row.get("request") or {}).get(RESPONSES_KEY) or {}
    stored = row.get("response") or {}
    status = RUN_STATUS.get(row.get("status") or "", "failed")
    error = None
    if status in ("failed", "cancelled") and row.get("error"):
        err = (row["error"] or {}).get("error") or {}
        error = {"code": err.get("code") or "server_error", "message": err.get("message") or row.get("status")}
    created = row.get("created_at")
    return response_object(
        request,
        run_id=row["id"],
        created_at=created.timestamp() if hasattr(created, "timestamp") else time.time(),
        status=status,
        output=output_items(stored.get("choices") or [], row["id"]) if status == "completed" else [],
        usage=response_usage(stored.get("usage")),
        error=error,
        optigraph={"run_id": row["id"], "approach": row.get("expression"), "upstream_calls": row.get("calls")},
        model=row.get("model"),
    )


def conversation_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a response continues from: its request's messages (without the system
    message its own `instructions` made, which OpenAI does not carry over) and its answer."""
    request = row.get("request") or {}
    messages = list(request.get("messages") or [])
    if (request.get(RESPONSES_KEY) or {}).get("instructions") and messages and messages[0].get("role") == "system":
        messages = messages[1:]
    choices = (row.get("response") or {}).get("choices") or []
    if choices:
        answer = choices[0].get("message") or {}
        message: dict[str, Any] = {"role": "assistant", "content": answer.get("content") or None}
        if answer.get("tool_calls"):
            message["tool_calls"] = answer["tool_calls"]
        messages.append(message)
    return messages
