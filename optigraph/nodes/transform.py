"""transform: prompt rewrites without an LLM (re-reading the question, adding system instructions).

Each returns a new conversation and never mutates its argument. Non-text parts of the rewritten
message (images, audio) are kept.
"""

from __future__ import annotations

from typing import Any

from optigraph.core.messages import message_text

# Re-Reading (Xu et al., arXiv 2309.06275): the question, then the question again.
REREAD_TEMPLATE = "{question}\nRead the question again: {question}"
REREAD_SUFFIX = "\nRead the question again: {question}"


def reread(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its last user turn stated twice ("Read the question again: ...")."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        message = out[i]
        if message.get("role") != "user":
            continue
        question = message_text(message)
        content = message.get("content")
        if isinstance(content, list):
            part = {"type": "text", "text": REREAD_SUFFIX.format(question=question)}
            out[i] = {**message, "content": [*content, part]}
        else:
            out[i] = {**message, "content": REREAD_TEMPLATE.format(question=question)}
        return out
    return out


def with_system_instructions(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    """The conversation with `instructions` appended to its first system message (or added as one)."""
    out = list(messages)
    for i, message in enumerate(out):
        if message.get("role") in ("system", "developer"):
            existing = message_text(message)
            joined = f"{existing}\n\n{instructions}" if existing.strip() else instructions
            out[i] = {**message, "content": joined}
            return out
    return [{"role": "system", "content": instructions}, *out]


def with_user_suffix(messages: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    """The conversation with `suffix` appended to its last user turn (a reminder a small model heeds
    more than a system message: it comes last)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        message = out[i]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            out[i] = {**message, "content": [*content, {"type": "text", "text": "\n\n" + suffix}]}
        else:
            out[i] = {**message, "content": f"{message_text(message)}\n\n{suffix}"}
        return out
    return out
