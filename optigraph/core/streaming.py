"""The stream sink: how graph nodes hand tokens to the client while a run is still going."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class StreamEvent:
    choice: int
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class TextRewriter(Protocol):
    """Rewrites one choice's streamed text: `feed` returns what may be sent now, `flush` the rest."""

    def feed(self, text: str) -> str: ...

    def flush(self) -> str: ...


@dataclass
class StreamSink:
    """Queue of deltas per choice index. `streamed` tells the runner which choices need no final send.

    Plugins that rewrite answers (placeholders restored, say) add a TextRewriter for the choices they
    wrap; text deltas pass through every rewriter of their choice, innermost plugin first, and
    `flush` releases what the rewriters held back when the choice ends."""

    queue: asyncio.Queue[StreamEvent | None] = field(default_factory=asyncio.Queue)
    streamed: set[int] = field(default_factory=set)
    rewriters: dict[int, list[TextRewriter]] = field(default_factory=dict)

    def put(self, event: StreamEvent) -> None:
        chain = self.rewriters.get(event.choice)
        if chain and event.delta.get("content"):
            text = event.delta["content"]
            for rewriter in reversed(chain):  # the innermost plugin registered last
                text = rewriter.feed(text)
            if not text and len(event.delta) == 1:
                return  # everything held back for now
            event = StreamEvent(
                choice=event.choice,
                delta={**event.delta, "content": text},
                finish_reason=event.finish_reason,
                logprobs=event.logprobs,
            )
        self.streamed.add(event.choice)
        self.queue.put_nowait(event)

    def add_rewriter(self, choice: int, rewriter: TextRewriter) -> None:
        self.rewriters.setdefault(choice, []).append(rewriter)

    def flush(self, choice: int) -> str:
        """What the rewriters of `choice` still hold, passed through the outer ones ('' when none)."""
        text = ""
        for rewriter in reversed(self.rewriters.pop(choice, [])):
            text = rewriter.feed(text) + rewriter.flush() if text else rewriter.flush()
        return text

    def close(self) -> None:
        self.queue.put_nowait(None)
