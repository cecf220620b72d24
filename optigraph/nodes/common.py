"""Small helpers every node uses: reaching the run context, the client's parameters, the query."""

from __future__ import annotations

from typing import Any

from optigraph.core.llm import Completion
from optigraph.core.messages import message_text
from optigraph.core.state import Answer, ApproachState, Candidate

# Client parameters that shape a generation and are forwarded to every sampling call.
GENERATION_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "user",
    "reasoning_effort",
    "active_adapter",
)


def generation_params(state: ApproachState, **overrides: Any) -> dict[str, Any]:
    """The client's generation parameters, with approach-specific overrides where not None.

    Approaches respect the client's temperature, max_tokens, stop, tools and response_format unless
    their algorithm needs something else (a rating call at low temperature, for example)."""
    request = state.get("request") or {}
    out = {k: request[k] for k in GENERATION_KEYS if k in request}
    for k, v in overrides.items():
        if v is not None:
            out[k] = v
    return out


def helper_params(state: ApproachState, **overrides: Any) -> dict[str, Any]:
    """Parameters for internal calls (ratings, critiques): none of the client's tools or formats."""
    request = state.get("request") or {}
    out = {k: request[k] for k in ("seed", "user", "active_adapter") if k in request}
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def branch_payload(
    state: ApproachState,
    branch: dict[str, Any],
    *,
    messages: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """The input of one fan-out branch (a LangGraph `Send`): what every node reads (conversation,
    client parameters, approach parameters) plus the branch's own `branch` fields."""
    payload = {
        "messages": state["messages"] if messages is None else messages,
        "request": state.get("request") or {},
        "params": (state.get("params") or {}) if params is None else params,
        "branch": branch,
    }
    if stream:
        payload["stream_choice"] = state.get("stream_choice")
    return payload


def candidates_from(completion: Completion, start: int = 0) -> list[Candidate]:
    return [
        {
            "index": start + i,
            "text": message_text(c.get("message") or {}),
            "message": c.get("message") or {"role": "assistant", "content": ""},
            "finish_reason": c.get("finish_reason"),
        }
        for i, c in enumerate(completion.choices)
    ]


def answer_of(choice_or_candidate: dict[str, Any]) -> Answer:
    """An Answer from an upstream choice or a candidate."""
    message = choice_or_candidate.get("message") or {
        "role": "assistant",
        "content": choice_or_candidate.get("text", ""),
    }
    return {
        "message": {"role": "assistant", **{k: v for k, v in message.items() if k != "role"}},
        "finish_reason": choice_or_candidate.get("finish_reason") or "stop",
        "logprobs": choice_or_candidate.get("logprobs"),
    }


def text_answer(text: str, finish_reason: str = "stop") -> Answer:
    return {"message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": None}
