"""Streamed chat deltas put back together into whole answers (content and tool calls, per choice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optigraph.core.llm import merge_tool_call_delta


@dataclass
class StreamedAnswers:
    """The answers of a chat-completion stream, built from its chunks' choices as they pass."""

    content: dict[int, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)

    def add(self, chunk: dict[str, Any]) -> None:
        """Folds one `chat.completion.chunk` dict in."""
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") or {}
            self.content.setdefault(index, [])
            if delta.get("content"):
                self.content[index].append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                merge_tool_call_delta(self.tool_calls.setdefault(index, {}), tc)
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]

    def answers(self) -> list[dict[str, Any]]:
        """One `{"message", "finish_reason"}` per choice, in index order (the stored shape of an answer)."""
        out = []
        for index in sorted(self.content):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content[index])}
            calls = self.tool_calls.get(index)
            if calls:
                message["tool_calls"] = [calls[i] for i in sorted(calls)]
            out.append({"message": message, "finish_reason": self.finish.get(index) or "stop"})
        return out
