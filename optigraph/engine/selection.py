"""Which approach expression serves a request, the OptILLM way.

First match wins:

1. a slug prefix on the model (`moa-gpt-4o-mini`, `bon&re2-gpt-4o`, `moa|bon-gpt-4o`);
2. `optillm_approach` in the request body (what the OpenAI client's `extra_body` sends);
3. an `<optillm_approach>X</optillm_approach>` tag in a system (or developer) message, else in a
   user message;
4. the server's default.

Differences from OptILLM, on purpose: the model prefix is looked at first (OptILLM prepends the
body/tag choice to the model and then splits it, so a prefix there ends up *behind* the other
choice); several slug segments without an operator (`bon-moa-gpt-4o`) form a pipeline
(`bon&moa`) where OptILLM silently runs only the first; a segment containing `&`, `|`, `(` or `)`
must be a valid expression of known slugs, and otherwise is a 400 that says where.

Tags are removed from every message (and the whitespace around them tidied) whichever source won,
so they never reach the upstream model. The input body is never mutated.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Literal, NamedTuple

from optigraph.engine.expression import (
    Limits,
    Node,
    check_text,
    is_name,
    parse,
    parse_span,
    pipeline,
    to_text,
    validate,
)
from optigraph.errors import (
    ExpressionError,
    ExpressionTooLarge,
    InvalidRequest,
    UnknownApproach,
)

__all__ = ["Selection", "Source", "select", "split_model", "strip_tags"]

Source = Literal["model", "body", "tag", "default"]

TAG_OPEN = "<optillm_approach>"
_TAG_RE = re.compile(r"<optillm_approach>(.*?)</optillm_approach>", re.DOTALL)
_OPERATORS = frozenset("&|()")
_SYSTEM_ROLES = frozenset({"system", "developer"})


class Selection(NamedTuple):
    """The chosen expression, the upstream model (None: the server's default) and cleaned messages.
    (A named tuple: made for every request, where a frozen dataclass costs three times as much.)"""

    expression: str
    model: str | None
    source: Source
    messages: list[dict[str, Any]]


def _has_operator(segment: str) -> bool:
    return not _OPERATORS.isdisjoint(segment)


def split_model(model: str, known: Collection[str], limits: Limits | None = None) -> tuple[str, str | None] | None:
    """Split a slug prefix off `model`: `(expression, upstream model or None)`, or None if no prefix.

    Leading `-`-separated segments that are known slugs, or expressions over known slugs, are the
    approach; the rest, re-joined, is the upstream model. Several such segments form a pipeline.
    With `limits`, a prefix longer than `limits.max_chars` is refused before it is parsed.
    """
    # Fast path: the usual plain model name ("gpt-4o", "openai/gpt-4o") has no slug first segment.
    first = model.partition("-")[0]
    if first not in known and not _has_operator(first):
        return None
    nodes: list[Node] = []
    offset = 0
    segments = model.split("-")
    for segment in segments:
        if limits is not None and (_has_operator(segment) or segment in known):
            check_text(model[: offset + len(segment)], limits)
        if _has_operator(segment):
            node = parse_span(model, offset, offset + len(segment))
            validate(node, known)
        elif is_name(segment) and segment in known:
            node = parse(segment)
        else:
            break
        nodes.append(node)
        offset += len(segment) + 1
    if not nodes:
        return None
    rest = model[offset:] if offset < len(model) else ""
    return to_text(pipeline(*nodes)), (rest or None)


def strip_tags(text: str) -> tuple[str, str | None]:
    """Remove every approach tag from `text`: `(cleaned text, first tag's value or None)`.

    Whitespace around a removed tag collapses to one separator (a blank line, a newline or a space:
    the most either side held, so a tag alone on its line leaves one newline), or to nothing at the
    start or end of the text.
    """
    if TAG_OPEN not in text:
        return text, None
    parts = _TAG_RE.split(text)
    if len(parts) == 1:
        return text, None
    chunks = parts[0::2]
    value = parts[1].strip()
    result = chunks[0]
    for chunk in chunks[1:]:
        left = result.rstrip()
        right = chunk.lstrip()
        if not left:
            result = right  # the tag was at the start
        elif right:  # (an empty `right` keeps the gap: the next chunk, or the end, decides)
            lines = max(result[len(left) :].count("\n"), chunk[: len(chunk) - len(right)].count("\n"))
            sep = "\n\n" if lines >= 2 else "\n" if lines else " "
            result = left + sep + right
    if not chunks[-1].strip():
        result = result.rstrip()  # the tag was at the end
    return result, value


def _clean_message(message: Any) -> tuple[Any, str | None]:
    """The message with its tags removed (a copy only if it had one) and its first tag's value."""
    if not isinstance(message, dict):
        return message, None
    content = message.get("content")
    if isinstance(content, str):
        if TAG_OPEN not in content:
            return message, None
        text, value = strip_tags(content)
        if text == content:
            return message, None
        return {**message, "content": text}, value
    if not isinstance(content, list):
        return message, None
    found: str | None = None
    parts: list[Any] | None = None
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            continue
        text = part.get("text")
        if not isinstance(text, str) or TAG_OPEN not in text:
            continue
        cleaned, value = strip_tags(text)
        if cleaned == text:
            continue
        if parts is None:
            parts = list(content)
        parts[i] = {**part, "text": cleaned}
        if found is None:
            found = value
    if parts is None:
        return message, None
    return {**message, "content": parts}, found


def _checked(text: str, known: Collection[str], param: str, limits: Limits | None) -> str:
    """The canonical form of an expression from the body or a tag, or a 400 naming `param`."""
    try:
        if limits is not None:
            check_text(text, limits)
        node = parse(text)
        validate(node, known)
    except (ExpressionError, ExpressionTooLarge, UnknownApproach) as exc:
        exc.param = param
        raise
    return to_text(node)


def select(body: dict[str, Any], *, known: Collection[str], default: str, limits: Limits | None = None) -> Selection:
    """Choose the expression for a chat request (see the module docstring for the order).

    `default` is the server's configured approach and is returned as is (validated at start).
    Raises ExpressionError or UnknownApproach (400s) for a bad explicit choice, ExpressionTooLarge
    for a text longer than `limits.max_chars` (checked before parsing it).
    """
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    raw_messages = body.get("messages")
    if raw_messages is None:
        raw_messages = []
    elif not isinstance(raw_messages, list):
        raise InvalidRequest("'messages' must be a list", param="messages")

    messages = list(raw_messages)
    system_tag: str | None = None
    user_tag: str | None = None
    for i, message in enumerate(raw_messages):
        cleaned, value = _clean_message(message)
        if cleaned is message:
            continue
        messages[i] = cleaned
        role = message.get("role")
        if value is not None:
            if role in _SYSTEM_ROLES and system_tag is None:
                system_tag = value
            elif role == "user" and user_tag is None:
                user_tag = value

    if model:
        split = split_model(model, known, limits)
        if split is not None:
            return Selection(split[0], split[1], "model", messages)
    upstream = model or None
    requested = body.get("optillm_approach")
    if requested is not None:
        if not isinstance(requested, str):
            raise InvalidRequest("'optillm_approach' must be a string", param="optillm_approach")
        return Selection(_checked(requested, known, "optillm_approach", limits), upstream, "body", messages)
    tag = system_tag if system_tag is not None else user_tag
    if tag is not None:
        return Selection(_checked(tag, known, "messages", limits), upstream, "tag", messages)
    return Selection(default, upstream, "default", messages)
