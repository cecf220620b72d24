"""The stream sink: how graph nodes hand tokens to the client while a run is still going."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamEvent:
    choice: int
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@dataclass
class StreamSink:
    """Queue of deltas per choice index. `streamed` tells the runner which choices need no final send."""

    queue: asyncio.Queue[StreamEvent | None] = field(default_factory=asyncio.Queue)
    streamed: set[int] = field(default_factory=set)

    def put(self, event: StreamEvent) -> None:
        self.streamed.add(event.choice)
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)
