"""A scripted LLM backend for tests: replies come from a function of the request body.

`ScriptedBackend(responder)` implements the Backend protocol. The responder gets the request body
plus `choice_index` (which of the n choices) and `call_index` (arrival order of the call), and
returns the reply text, a dict (`content`, optional `finish_reason` / `tool_calls`), or an
Exception instance to raise instead of answering.

`ScriptedBackend(responder, waves=[3, 3, 1])` proves concurrency and rounds without a clock: calls are
held until every call of their wave is in flight at once (waves filled in arrival order), and a call
that arrives while the previous wave is still unanswered is recorded as not depending on it. What
went wrong is listed in `wave_errors` (empty when the calls came in exactly those dependent rounds).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from langgraph.graph import StateGraph

from optigraph.core.backend import Capabilities
from optigraph.core.context import RunContext
from optigraph.core.llm import LLM
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachSpec
from optigraph.core.streaming import StreamSink
from optigraph.memory.records import NullRecorder

Reply = str | dict[str, Any] | BaseException
Responder = Callable[[dict[str, Any]], Reply]

# Loop turns a full wave waits before answering, so that a call that does not need its answers can
# show up; and how long a wave may take to fill before the gate gives up (a hang guard, not a measure).
SETTLE_TURNS = 50
FILL_GUARD_S = 60.0


def prompt_tokens(body: dict[str, Any]) -> int:
    """A deterministic prompt token count: words in every message, plus 1 per message."""
    return sum(len(message_text(m).split()) + 1 for m in body.get("messages") or ())


def last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or ()):
        if m.get("role") == "user":
            return message_text(m)
    return ""


def replies(*texts: Reply) -> Responder:
    """A responder returning `texts` in call order (repeating the last)."""
    counter = itertools.count()

    def respond(body: dict[str, Any]) -> Reply:
        return texts[min(next(counter), len(texts) - 1)]

    return respond


class ScriptedBackend:
    name = "scripted"

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        capabilities: Capabilities | dict[str, Any] | None = None,
        waves: Sequence[int] | None = None,
        fill_guard_s: float = FILL_GUARD_S,
    ) -> None:
        self.responder: Responder = responder or (lambda body: "ok")
        self.latency = latency
        if isinstance(capabilities, dict):
            capabilities = replace(Capabilities(), **capabilities)
        self.caps = capabilities or Capabilities()
        self.calls: list[dict[str, Any]] = []  # every request body received, in arrival order
        self.usages: list[dict[str, int]] = []  # the usage of every successful response
        self.in_flight = 0
        self.max_in_flight = 0
        self._counter = itertools.count()
        self.waves = _Waves(waves, fill_guard_s) if waves is not None else None

    @property
    def wave_errors(self) -> list[str]:
        """How the calls departed from the expected waves (none expected: always empty)."""
        return self.waves.errors if self.waves is not None else []

    def capabilities(self, model: str) -> Capabilities:
        return self.caps

    def total_usage(self) -> dict[str, int]:
        """Sum of every successful response's usage, and the number of such calls."""
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        return {**{k: sum(u[k] for u in self.usages) for k in keys}, "calls": len(self.usages)}

    # ---- helpers ------------------------------------------------------------------------------

    def _enter(self, body: dict[str, Any]) -> int:
        self.calls.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return next(self._counter)

    async def _hold(self, call_index: int) -> None:
        if self.waves is not None:
            await self.waves.hold(call_index)
        if self.latency:
            await asyncio.sleep(self.latency)

    def _choices(self, body: dict[str, Any], call_index: int) -> list[dict[str, Any]]:
        n = int(body.get("n") or 1) if self.caps.n_sampling else 1
        choices = []
        for i in range(n):
            reply = self.responder({**body, "choice_index": i, "call_index": call_index})
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, str):
                reply = {"content": reply}
            message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
            if reply.get("tool_calls"):
                message["tool_calls"] = reply["tool_calls"]
            choices.append({"index": i, "message": message, "finish_reason": reply.get("finish_reason", "stop")})
        return choices

    @staticmethod
    def _usage(body: dict[str, Any], choices: Sequence[dict[str, Any]]) -> dict[str, int]:
        prompt = prompt_tokens(body)
        completion = sum(len((c["message"].get("content") or "").split()) for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ---- Backend protocol ---------------------------------------------------------------------

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        call_index = self._enter(body)
        try:
            await self._hold(call_index)
            choices = self._choices(body, call_index)
            usage = self._usage(body, choices)
            self.usages.append(usage)
            return {
                "id": f"chatcmpl-{call_index}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "m"),
                "choices": choices,
                "usage": usage,
            }
        finally:
            self.in_flight -= 1

    async def stream(self, body: dict[str, Any], *, api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        call_index = self._enter(body)
        try:
            await self._hold(call_index)
            choices = self._choices(body, call_index)
            usage = self._usage(body, choices)
            self.usages.append(usage)
            base = {
                "id": f"chatcmpl-{call_index}",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model", "m"),
            }
            for c in choices:
                yield {
                    **base,
                    "choices": [{"index": c["index"], "delta": {"role": "assistant"}, "finish_reason": None}],
                }
                words = (c["message"].get("content") or "").split(" ")
                for j, word in enumerate(words):
                    piece = word if j == 0 else " " + word
                    yield {
                        **base,
                        "choices": [{"index": c["index"], "delta": {"content": piece}, "finish_reason": None}],
                    }
                yield {**base, "choices": [{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}]}
            if (body.get("stream_options") or {}).get("include_usage"):
                yield {**base, "choices": [], "usage": usage}
        finally:
            self.in_flight -= 1

    async def list_models(self, *, api_key: str | None = None) -> list[dict[str, Any]]:
        return [{"id": "m", "object": "model", "owned_by": "scripted"}]

    async def aclose(self) -> None:
        return None


class _Waves:
    """Releases calls in waves of the given sizes, each once all of its calls are in flight together."""

    def __init__(self, sizes: Sequence[int], fill_guard_s: float) -> None:
        self.sizes = list(sizes)
        self.fill_guard_s = fill_guard_s
        self.errors: list[str] = []
        self._released = [asyncio.Event() for _ in self.sizes]
        self._arrived = [0] * len(self.sizes)
        self._settling: int | None = None  # the full wave now waiting a few turns before it answers
        self._broken = False

    def _wave_of(self, call_index: int) -> int | None:
        end = 0
        for k, size in enumerate(self.sizes):
            end += size
            if call_index < end:
                return k
        return None

    async def hold(self, call_index: int) -> None:
        if self._broken:
            return
        k = self._wave_of(call_index)
        if self._settling is not None:
            self.errors.append(
                f"call {call_index} arrived before wave {self._settling} was answered: it does not depend on that wave"
            )
        if k is None:
            self.errors.append(f"call {call_index} is beyond the {len(self.sizes)} expected waves")
            return
        self._arrived[k] += 1
        if self._arrived[k] == self.sizes[k]:
            self._settling = k
            for _ in range(SETTLE_TURNS):
                await asyncio.sleep(0)
            self._settling = None
            self._released[k].set()
            return
        try:
            await asyncio.wait_for(self._released[k].wait(), self.fill_guard_s)
        except TimeoutError:
            self.errors.append(
                f"wave {k}: only {self._arrived[k]} of {self.sizes[k]} calls were in flight "
                "together (the rest waited for these)"
            )
            self._broken = True  # let everything through: the test fails on the errors, it does not hang
            for event in self._released:
                event.set()


async def run_approach(
    spec_or_graph: ApproachSpec | StateGraph,
    messages: list[dict[str, Any]],
    backend: ScriptedBackend,
    *,
    request: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    sink: StreamSink | None = None,
    stream_choice: int | None = None,
    sandbox_level: str = "strict",
) -> tuple[dict[str, Any], ScriptedBackend]:
    """Compiles the approach's graph (no checkpointer) and runs it once against `backend`, with the
    sandbox at `sandbox_level` for any program it runs."""
    if isinstance(spec_or_graph, ApproachSpec):
        graph, validated = spec_or_graph.build(), spec_or_graph.validate_params(params)
    else:
        graph, validated = spec_or_graph, dict(params or {})
    llm = LLM(backend=backend, model="m", run_id="t", recorder=NullRecorder())
    context = RunContext(run_id="t", llm=llm, sink=sink, sandbox_level=sandbox_level)
    state = await graph.compile().ainvoke(
        {"messages": messages, "request": request or {}, "params": validated, "stream_choice": stream_choice},
        context=context,
    )
    return state, backend
