"""Reading and rewriting OpenAI-format conversations (lists of message dicts)."""

from __future__ import annotations

from typing import Any


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m)
    return ""


def replace_last_user(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """A copy of the conversation with the last user turn's text replaced (pipelines feed a stage's
    answer to the next this way)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            out[i] = {**out[i], "content": text}
            return out
    return out + [{"role": "user", "content": text}]
