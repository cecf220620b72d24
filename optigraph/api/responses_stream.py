"""A chat-completion stream translated into the Responses API's streaming events.

The sequence, as OpenAI documents it: `response.created`, `response.in_progress`; per output item
`response.output_item.added`, then for a message `response.content_part.added`,
`response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`, or for a
function call `response.function_call_arguments.delta`..., `response.function_call_arguments.done`;
`response.output_item.done`; finally `response.completed` with the whole response (its usage too).
Every event carries a `sequence_number`. An error after the stream began ends it with
`response.failed`. Each choice of the chat stream (one per branch of `a|b`) has at most one open item
at a time: a new item of the same choice closes the one before.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from optigraph.api.responses_output import (
    function_call_item,
    message_item,
    response_object,
    response_usage,
    text_part,
)


@dataclass
class _Item:
    output_index: int
    choice: int
    kind: str  # "message" | "function_call"
    item: dict[str, Any]
    pieces: list[str] = field(default_factory=list)  # text or arguments so far
    open: bool = True


class ResponseEvents:
    """Turns the chat chunks of one run into Responses events (SSE bytes), in order."""

    def __init__(self, request: dict[str, Any], *, run_id: str, model: str) -> None:
        self.request = request
        self.run_id = run_id
        self.model = model
        self.created_at = time.time()
        self.sequence = 0
        self.items: list[_Item] = []
        self.current: dict[int, _Item] = {}  # choice -> its open item
        self.calls: dict[tuple[int, int], _Item] = {}  # (choice, tool call index) -> its item
        self.finish: dict[int, str] = {}
        self.usage: dict[str, Any] | None = None
        self.optigraph: dict[str, Any] | None = None

    # ---- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str, *, error: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status != "in_progress"
        return response_object(
            self.request,
            run_id=self.run_id,
            created_at=self.created_at,
            status=status,
            output=[i.item for i in self.items] if done else [],
            usage=response_usage(self.usage) if done else None,
            error=error,
            optigraph=self.optigraph if done else None,
            model=self.model,
        )

    def start(self) -> list[bytes]:
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _open(self, choice: int, kind: str, item: dict[str, Any]) -> tuple[_Item, list[bytes]]:
        out = self._close(choice)
        entry = _Item(output_index=len(self.items), choice=choice, kind=kind, item=item)
        self.items.append(entry)
        self.current[choice] = entry
        out.append(self._event("response.output_item.added", output_index=entry.output_index, item=dict(item)))
        if kind == "message":
            out.append(self._part_event("response.content_part.added", entry, text_part("")))
        return entry, out

    def _part_event(self, kind: str, entry: _Item, part: dict[str, Any]) -> bytes:
        return self._event(kind, item_id=entry.item["id"], output_index=entry.output_index, content_index=0, part=part)

    def _close(self, choice: int) -> list[bytes]:
        entry = self.current.pop(choice, None)
        if entry is None:
            return []
        entry.open = False
        where = {"item_id": entry.item["id"], "output_index": entry.output_index}
        text = "".join(entry.pieces)
        if entry.kind == "message":
            status = "incomplete" if self.finish.get(choice) == "length" else "completed"
            entry.item = message_item(entry.item["id"], text, status=status)
            out = [
                self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                self._part_event("response.content_part.done", entry, text_part(text)),
            ]
        else:
            entry.item = {**entry.item, "arguments": text, "status": "completed"}
            out = [self._event("response.function_call_arguments.done", **where, arguments=text)]
        out.append(self._event("response.output_item.done", output_index=entry.output_index, item=entry.item))
        return out

    # ---- chat chunks ----------------------------------------------------------------------------

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events of one `chat.completion.chunk`."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("optigraph"):
            self.optigraph = chunk["optigraph"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(index, delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(index, call)
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]
                out += self._close(index)
        return out

    def _text(self, choice: int, text: str) -> list[bytes]:
        entry, out = self.current.get(choice), []
        if entry is None or entry.kind != "message":
            entry, out = self._open(
                choice, "message", message_item(f"msg_{self.run_id}_{len(self.items)}", None, status="in_progress")
            )
        entry.pieces.append(text)
        where = {"item_id": entry.item["id"], "output_index": entry.output_index}
        out.append(self._event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[]))
        return out

    def _tool_call(self, choice: int, delta: dict[str, Any]) -> list[bytes]:
        key = (choice, int(delta.get("index") or 0))
        function = delta.get("function") or {}
        entry, out = self.calls.get(key), []
        if entry is None:
            item = function_call_item(
                f"fc_{self.run_id}_{len(self.items)}",
                {"id": delta.get("id"), "function": {"name": function.get("name") or ""}},
                status="in_progress",
            )
            entry, out = self._open(choice, "function_call", item)
            self.calls[key] = entry
        elif function.get("name"):  # a name sent in pieces
            entry.item = {**entry.item, "name": entry.item["name"] + function["name"]}
        arguments = function.get("arguments") or ""
        if arguments:
            entry.pieces.append(arguments)
            if entry.open:  # a late piece of a call already closed only completes the final response
                where = {"item_id": entry.item["id"], "output_index": entry.output_index}
                out.append(self._event("response.function_call_arguments.delta", **where, delta=arguments))
        return out

    # ---- the end --------------------------------------------------------------------------------

    def complete(self) -> list[bytes]:
        out = [e for choice in list(self.current) for e in self._close(choice)]
        response = self._response("completed")
        out.append(self._event(f"response.{response['status']}", response=response))
        return out

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        """`response.failed`, with the error the chat stream ended with."""
        err = error.get("error") if isinstance(error.get("error"), dict) else error
        failure = {"code": err.get("code") or "server_error", "message": str(err.get("message") or "the run failed")}
        return [self._event("response.failed", response=self._response("failed", error=failure))]

    async def translate(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The events of a chat SSE stream (the runner's bytes: one `data:` line per item)."""
        try:
            for event in self.start():
                yield event
            async for data in chunks:
                payload = data.removeprefix(b"data: ").strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                if "error" in chunk and "choices" not in chunk:
                    for event in self.fail(chunk):
                        yield event
                    return
                for event in self.chunk(chunk):
                    yield event
            for event in self.complete():
                yield event
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:  # the client went: so does the run (unless it asked for background)
                await aclose()
