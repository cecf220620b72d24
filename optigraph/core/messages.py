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
    """A copy of the conversation whose last user turn says `text` instead (a pipeline feeds a stage's
    answer to the next this way). Nothing else changes: other turns keep their roles (system,
    developer, tool...) and fields, and the replaced turn keeps its other fields and its non-text
    parts (images, audio, files) in place, its text parts becoming one part with `text`. Without a
    user turn, one is appended."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            out[i] = {**out[i], "content": _replace_text(out[i].get("content"), text)}
            return out
    return out + [{"role": "user", "content": text}]


def with_text(message: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of `message` saying `text`: its other fields and non-text parts stay as they were (as
    in replace_last_user)."""
    return {**message, "content": _replace_text(message.get("content"), text)}


def _replace_text(content: Any, text: str) -> Any:
    if not isinstance(content, list):
        return text
    parts: list[Any] = []
    placed = False
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            if not placed:
                parts.append({**part, "text": text})
                placed = True
            continue
        parts.append(part)
    if not placed:
        parts.insert(0, {"type": "text", "text": text})
    return parts
