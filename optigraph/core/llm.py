"""The one way nodes call an LLM: normalisation, `n` emulation, retries, streaming and recording.

Every upstream request of a run goes through an `LLM`, so usage is exact and every call is recorded
with the node that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from optigraph.core.backend import Backend, Balancer, Capabilities
from optigraph.core.lru import LRUCache
from optigraph.core.messages import message_text
from optigraph.core.params import normalise
from optigraph.core.streaming import StreamEvent, StreamSink
from optigraph.core.usage import Usage, add_usage, empty_usage, one_call, usage_from_response
from optigraph.errors import BudgetExceeded, UpstreamError, UpstreamInvalidResponse, UpstreamTimeout
from optigraph.memory.records import CallRecord, Recorder, utcnow
from optigraph.telemetry import OFF, Telemetry
from optigraph.telemetry.tracing import active, first_within

# Fields of an upstream body that the LLM itself sets (the conversation, the model, streaming, n).
TRANSPORT_FIELDS = frozenset({"messages", "model", "n", "stream", "stream_options"})


@dataclass
class Completion:
    """The answer to one logical request (possibly several upstream calls when `n` is emulated)."""

    choices: list[dict[str, Any]]
    usage: Usage
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [message_text(c.get("message") or {}) for c in self.choices]

    @property
    def text(self) -> str:
        return self.texts[0] if self.choices else ""

    @property
    def finish_reasons(self) -> list[str | None]:
        return [c.get("finish_reason") for c in self.choices]


@dataclass
class Budget:
    """Per-run cap on upstream calls and completion tokens, shared by all the run's nodes."""

    max_calls: int | None = None
    max_tokens: int | None = None
    calls: int = 0
    tokens: int = 0

    def charge_call(self) -> None:
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise BudgetExceeded(f"the run reached its cap of {self.max_calls} upstream calls")
        self.calls += 1

    def charge_tokens(self, n: int) -> None:
        self.tokens += n
        if self.max_tokens is not None and self.tokens > self.max_tokens:
            raise BudgetExceeded(f"the run used {self.tokens} tokens, over its cap of {self.max_tokens}")


class LLM:
    """Calls one backend model on behalf of one run."""

    def __init__(
        self,
        *,
        backend: Backend,
        model: str,
        run_id: str,
        recorder: Recorder,
        api_key: str | None = None,
        retries: int = 2,
        budget: Budget | None = None,
        n_support: MutableMapping[str, bool] | LRUCache[str, bool] | None = None,
        telemetry: Telemetry = OFF,
    ) -> None:
        self.backend = backend
        self.telemetry = telemetry  # metrics and spans of each call (recorded in _record)
        self.model = model
        self.run_id = run_id
        self.recorder = recorder
        self.api_key = api_key
        self.retries = retries
        self.budget = budget or Budget()
        # Learned per server (a bounded cache owned by the runner, keyed by backend and model):
        # whether this backend/model returned all n choices from one call.
        self._n_support = n_support if n_support is not None else LRUCache(64)
        self.caps: Capabilities = backend.capabilities(model)
        # A backend over several providers leases one per attempt (backends/proxy.py). Checked by its
        # `lease` method: isinstance against the runtime Protocol cost about 50 us per run.
        lease = getattr(backend, "lease", None)
        self._balancer: Balancer | None = backend if callable(lease) else None  # type: ignore[assignment]
        # The run's usage (core/usage.py): every recorded call, failed and cancelled attempts included.
        self.spent: Usage = empty_usage()
        self.answered: Usage = empty_usage()  # the calls that answered
        self.parent: LLM | None = None  # the run's main client, when this one addresses another upstream

    def sibling(self, backend: Backend, model: str | None = None) -> LLM:
        """A client of the same run on another backend (a named upstream): same run id, recorder,
        budget and retries, its own key (the backend's configured one, never the client's), and its
        calls counted in this client's totals too."""
        other = LLM(
            backend=backend,
            model=model or self.model,
            run_id=self.run_id,
            recorder=self.recorder,
            api_key=None,
            retries=self.retries,
            budget=self.budget,
            n_support=self._n_support,
            telemetry=self.telemetry,
        )
        other.parent = self
        return other

    def _tally(self, usage: Usage, *, answered: bool) -> None:
        self.spent = add_usage(self.spent, usage)
        if answered:
            self.answered = add_usage(self.answered, usage)
        if self.parent is not None:
            self.parent._tally(usage, answered=answered)

    # ---- raw forwarding (passthrough) -------------------------------------------------------

    async def forward(self, body: dict[str, Any], *, node: str, partial: bool = False) -> Completion:
        """Sends a whole request body (unknown fields included) and returns every choice asked for.

        With `partial`, an emulated `n` returns the choices whose calls succeeded (fewer than n)
        and raises only when every call failed."""
        body = normalise({**body, "model": self.model}, self.caps)
        n = int(body.get("n") or 1)
        key = f"{self.backend.name}:{self.model}"
        if n > 1 and (not self.caps.n_sampling or self._n_support.get(key) is False):
            return _answered(await self._emulate_n(body, n, node=node, partial=partial), self.model)
        raw = await self._call(body, node=node)
        choices = raw.get("choices") or []
        if n > 1 and len(choices) < n:
            self._n_support[key] = False
            extra = await self._emulate_n(body, n - len(choices), node=node, partial=partial, first=len(choices))
            choices = choices + extra.choices
            usage = add_usage(usage_from_response(raw.get("usage")), extra.usage)
        else:
            if n > 1:
                self._n_support[key] = True
            usage = usage_from_response(raw.get("usage"))
        for i, c in enumerate(choices):
            c["index"] = i
        raw["choices"] = choices
        return _answered(Completion(choices=choices, usage=usage, raw=raw), self.model)

    async def _emulate_n(
        self, body: dict[str, Any], n: int, *, node: str, partial: bool = False, first: int = 0
    ) -> Completion:
        """`n` concurrent single-choice calls; with a seed, choice i (counting from `first`, the
        choices already sampled) gets seed + i, so no two choices share a seed."""
        bodies = self._seeded(body, n, first)
        results = await asyncio.gather(*(self._call(b, node=node) for b in bodies), return_exceptions=partial)
        raws = [r for r in results if not isinstance(r, BaseException)]
        failures = [r for r in results if isinstance(r, BaseException)]
        # Only upstream failures are tolerated; anything else (budget, bugs) still propagates.
        if failures and (not raws or any(not isinstance(e, UpstreamError) for e in failures)):
            raise next((e for e in failures if not isinstance(e, UpstreamError)), failures[0])
        choices: list[dict[str, Any]] = []
        usage = empty_usage()
        for raw in raws:
            choices.extend(raw.get("choices") or [])
            usage = add_usage(usage, usage_from_response(raw.get("usage")))
        for i, c in enumerate(choices):
            c["index"] = i
        return Completion(choices=choices, usage=usage, raw=raws[0] if raws else {})

    def _seeded(self, body: dict[str, Any], n: int, first: int = 0) -> list[dict[str, Any]]:
        """`n` single-choice bodies; with a seed, choice i gets seed + first + i (no two alike)."""
        single = {**body, "n": 1}
        if body.get("seed") is None:
            return [single] * n
        return [{**single, "seed": int(body["seed"]) + first + i} for i in range(n)]

    async def forward_stream(self, body: dict[str, Any], *, node: str) -> AsyncIterator[dict[str, Any]]:
        """Relays upstream chunks as they arrive and records the call when the stream ends.

        A failure before the first chunk is retried like any call; after it, it is reported (the
        client already has part of the answer). `n` > 1 on an upstream not known to honour it is
        served by concurrent single-choice streams, merged with their choice indexes."""
        body = normalise({**body, "model": self.model}, self.caps)
        n = int(body.get("n") or 1)
        key = f"{self.backend.name}:{self.model}"
        if n > 1 and (not self.caps.n_sampling or self._n_support.get(key) is False):
            async for chunk in self._merged_streams(self._seeded(body, n), node=node):
                yield chunk
            return
        seen: set[int] = set()
        attempt = 0
        tried: list[str] = []
        while True:
            attempt += 1
            try:
                async for chunk in self._stream_once(body, node=node, attempt=attempt, tried=tried):
                    seen.update(c.get("index", 0) for c in chunk.get("choices") or ())
                    yield chunk
                break
            except UpstreamError as exc:
                if seen or not self._retries_after(exc, attempt):
                    raise
            await asyncio.sleep(self._backoff_s(attempt))
        if n > 1:
            self._n_support[key] = len(seen) >= n
            if len(seen) < n:  # the upstream ignored n: the missing choices follow, streamed concurrently
                async for chunk in self._merged_streams(
                    self._seeded(body, n - len(seen), len(seen)), node=node, first=len(seen)
                ):
                    yield chunk

    async def _merged_streams(
        self, bodies: list[dict[str, Any]], *, node: str, first: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """Single-choice streams run concurrently; stream i's chunks carry choice index first + i."""
        queue: asyncio.Queue[tuple[int, dict[str, Any] | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, b: dict[str, Any]) -> None:
            try:
                async for chunk in self.forward_stream(b, node=node):
                    queue.put_nowait((i, chunk))
                queue.put_nowait((i, None))
            except BaseException as exc:  # handed to the consumer, which raises it
                queue.put_nowait((i, exc))

        tasks = [asyncio.create_task(pump(i, b)) for i, b in enumerate(bodies)]
        usage = empty_usage()
        try:
            open_streams = len(tasks)
            while open_streams:
                i, item = await queue.get()
                if item is None:
                    open_streams -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item.get("usage"):
                    usage = add_usage(usage, usage_from_response(item["usage"]))
                choices = [{**c, "index": first + i} for c in item.get("choices") or ()]
                if choices:
                    yield {**{k: v for k, v in item.items() if k != "usage"}, "choices": choices}
            yield {
                "choices": [],
                "usage": {
                    "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": usage["completion_tokens"],
                    "total_tokens": usage["total_tokens"],
                    "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
                },
            }
        finally:
            for t in tasks:
                t.cancel()

    async def _stream_once(
        self, body: dict[str, Any], *, node: str, attempt: int, tried: list[str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        self.budget.charge_call()
        started, t0 = utcnow(), time.perf_counter()
        span = self._call_span(node, attempt)
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage: dict[str, Any] | None = None
        error: str | None = None
        served_by = self.backend.name
        outcome = "ok"
        try:
            async with self._attempt(tried if tried is not None else []) as target:
                served_by = target.name
                chunks = target.stream(body, api_key=self.api_key)
                if span is not None:  # the span is current while the request is sent (its `traceparent`)
                    chunks = first_within(span, chunks)
                async for chunk in chunks:
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for c in chunk.get("choices") or ():
                        idx = c.get("index", 0)
                        delta = c.get("delta") or {}
                        if delta.get("content"):
                            texts.setdefault(idx, []).append(delta["content"])
                        if c.get("finish_reason"):
                            finish[idx] = c["finish_reason"]
                    yield chunk
        except UpstreamError as exc:
            error, outcome = exc.message, _outcome(exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client left, or a sibling branch failed
            error, outcome = "cancelled before the stream ended", "cancelled"
            raise
        except Exception as exc:
            error, outcome = f"{type(exc).__name__}: {exc}", "error"
            raise
        finally:
            self._record(
                node=node,
                body=body,
                started=started,
                t0=t0,
                response={
                    "choices": [{"text": "".join(t), "finish_reason": finish.get(i)} for i, t in sorted(texts.items())]
                },
                usage=usage_from_response(usage),
                error=error,
                attempt=attempt,
                backend=served_by,
                outcome=outcome,
                span=span,
            )

    # ---- the call nodes use ------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        node: str,
        n: int = 1,
        sink: StreamSink | None = None,
        stream_choice: int | None = None,
        partial: bool = False,
        fields: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Completion:
        """Chat completion for `messages`. With a sink and a choice index (and n == 1) the tokens
        are streamed to the client as they are generated. `partial`: see `forward`.

        `fields` are request fields sent as they are (a client's, unknown ones included); they come
        as one dict, never as keyword arguments, so a client field named `node` or `sink` is just a
        field. `params` (approach-chosen values) win over them; the transport fields are ours."""
        body: dict[str, Any] = {k: v for k, v in (fields or {}).items() if v is not None and k not in TRANSPORT_FIELDS}
        body.update((k, v) for k, v in params.items() if v is not None)
        body["messages"] = messages
        if n > 1:
            body["n"] = n
        if sink is not None and stream_choice is not None and n == 1 and self.caps.streaming:
            return await self._chat_streamed(body, node=node, sink=sink, choice=stream_choice)
        return await self.forward(body, node=node, partial=partial)

    async def _chat_streamed(self, body: dict[str, Any], *, node: str, sink: StreamSink, choice: int) -> Completion:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: dict[str, Any] | None = None
        answered = False
        async for chunk in self.forward_stream(body, node=node):
            if chunk.get("usage"):
                usage = chunk["usage"]
            answered = answered or bool(chunk.get("choices"))
            for c in chunk.get("choices") or ():
                delta = c.get("delta") or {}
                if delta.get("content"):
                    parts.append(delta["content"])
                for tc in delta.get("tool_calls") or ():
                    merge_tool_call_delta(tool_calls, tc)
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
                out = {k: v for k, v in delta.items() if k in ("content", "tool_calls") and v}
                if out:
                    sink.put(StreamEvent(choice=choice, delta=out, logprobs=c.get("logprobs")))
        if not answered:
            raise UpstreamInvalidResponse(f"the upstream's stream carried no choices for model {self.model!r}")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(parts)}
        if tool_calls:
            message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
        return Completion(
            choices=[{"index": 0, "message": message, "finish_reason": finish or "stop"}],
            usage=usage_from_response(usage),
        )

    # ---- one upstream request, with retries and recording -----------------------------------

    def _attempt(self, tried: list[str]) -> AbstractAsyncContextManager[Backend]:
        """The backend one attempt goes to: this client's, or the provider a balancer leases (its
        name added to `tried`, so that a retry goes elsewhere)."""
        if self._balancer is not None:
            return _leased(self._balancer, self.model, tried)
        return contextlib.nullcontext(self.backend)

    def _retries_after(self, exc: UpstreamError, attempt: int) -> bool:
        """Whether attempt `attempt`, which failed with `exc`, is followed by another."""
        if self._balancer is not None:
            return self._balancer.fails_over(exc) and attempt <= self._balancer.retries
        return exc.retryable and attempt <= self.retries

    def _backoff_s(self, attempt: int) -> float:
        if self._balancer is not None:
            return self._balancer.backoff_s(attempt)
        # Equal jitter: half the exponential step plus a random share of the other half, so clients
        # that failed together do not all retry at the same instant.
        step = 0.2 * 2 ** (attempt - 1)
        return step / 2 + random.uniform(0.0, step / 2)

    async def _call(self, body: dict[str, Any], *, node: str) -> dict[str, Any]:
        attempt = 0
        tried: list[str] = []
        while True:
            attempt += 1
            self.budget.charge_call()
            started, t0 = utcnow(), time.perf_counter()
            served_by = self.backend.name
            span = self._call_span(node, attempt)
            try:
                if self._balancer is None and span is None:  # the common case, without the two blocks below
                    raw = await self.backend.complete(body, api_key=self.api_key)
                else:
                    async with self._attempt(tried) as target:
                        served_by = target.name
                        with active(span):  # its context goes upstream as `traceparent`
                            raw = await target.complete(body, api_key=self.api_key)
            except UpstreamError as exc:
                self._record(
                    node=node,
                    body=body,
                    started=started,
                    t0=t0,
                    response=None,
                    usage=empty_usage(),
                    error=exc.message,
                    attempt=attempt,
                    backend=served_by,
                    outcome=_outcome(exc),
                    span=span,
                )
                if self._retries_after(exc, attempt):
                    await asyncio.sleep(self._backoff_s(attempt))
                    continue
                raise
            except asyncio.CancelledError:  # recorded too: the upstream may have spent tokens on it
                self._record(
                    node=node,
                    body=body,
                    started=started,
                    t0=t0,
                    response=None,
                    usage=empty_usage(),
                    error="cancelled before the upstream answered",
                    attempt=attempt,
                    backend=served_by,
                    outcome="cancelled",
                    span=span,
                )
                raise
            usage = usage_from_response(raw.get("usage"))
            self._record(
                node=node,
                body=body,
                started=started,
                t0=t0,
                response={
                    "choices": [
                        {
                            "text": message_text(c.get("message") or {}),
                            "finish_reason": c.get("finish_reason"),
                            **(
                                {"tool_calls": c["message"]["tool_calls"]}
                                if (c.get("message") or {}).get("tool_calls")
                                else {}
                            ),
                        }
                        for c in raw.get("choices") or ()
                    ]
                },
                usage=usage,
                error=None,
                attempt=attempt,
                backend=served_by,
                span=span,
            )
            return raw

    def _call_span(self, node: str, attempt: int) -> Any:
        """The span of one upstream attempt, or None when tracing is off."""
        tracing = self.telemetry.tracing
        if tracing is None:
            return None
        return tracing.start_call(node=node, backend=self.backend.name, model=self.model, attempt=attempt)

    def _record(
        self,
        *,
        node: str,
        body: dict[str, Any],
        started: Any,
        t0: float,
        response: dict[str, Any] | None,
        usage: Usage,
        error: str | None,
        attempt: int,
        backend: str | None = None,
        outcome: str = "ok",
        span: Any = None,
    ) -> None:
        self._tally(one_call(usage), answered=error is None)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        completion = usage["completion_tokens"]
        metrics = self.telemetry.metrics
        if metrics is not None:
            metrics.upstream_call(
                backend=backend or self.backend.name,
                model=self.model,
                outcome=outcome,
                seconds=latency_ms / 1000.0,
                attempt=attempt,
            )
        if span is not None:
            self.telemetry.tracing.end_call(  # type: ignore[union-attr]
                span, outcome=outcome, input_tokens=usage["prompt_tokens"], output_tokens=completion, error=error
            )
        self.recorder.call(
            CallRecord(
                run_id=self.run_id,
                node=node,
                backend=backend or self.backend.name,
                model=self.model,
                started_at=started,
                latency_ms=latency_ms,
                status="error" if error else "ok",
                request=body,
                response=response,
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                reasoning_tokens=usage["reasoning_tokens"],
                error=error,
                attempt=attempt,
            )
        )
        self.budget.charge_tokens(usage["completion_tokens"])


@contextlib.asynccontextmanager
async def _leased(balancer: Balancer, model: str, tried: list[str]) -> AsyncIterator[Backend]:
    async with balancer.lease(model, tried) as target:
        tried.append(target.name)
        yield target


def _outcome(exc: UpstreamError) -> str:
    """The outcome label of a failed upstream attempt."""
    return "timeout" if isinstance(exc, UpstreamTimeout) else "error"


def _answered(completion: Completion, model: str) -> Completion:
    """The completion, or an UpstreamError (502) when the upstream answered with no choice at all:
    every caller needs at least one, and an empty answer is the upstream's fault, not the client's."""
    if not completion.choices:
        raise UpstreamInvalidResponse(f"the upstream answered with no choices for model {model!r}")
    return completion


def merge_tool_call_delta(acc: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Accumulates one streamed tool_calls delta into whole tool calls, keyed by index."""
    idx = delta.get("index", 0)
    cur = acc.setdefault(idx, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        cur["id"] = delta["id"]
    if delta.get("type"):
        cur["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        cur["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        cur["function"]["arguments"] += fn["arguments"]
