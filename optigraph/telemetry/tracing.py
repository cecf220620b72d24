"""OpenTelemetry traces: a span for each run, each graph node and each upstream call.

    optigraph.run  (SERVER; a child of the client's W3C `traceparent` when it sent one)
      node <name>  (one per graph node executed; nested for composite expressions)
        upstream <backend>  (CLIENT; one per attempt; its context goes upstream as `traceparent`)

Attributes: `optigraph.run_id` (the stored run), `optigraph.approach`, `optigraph.node`,
`gen_ai.request.model`, `gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens` (per call,
summed per node and per run), `optigraph.upstream_calls`, `optigraph.status`.

Tracing is on only when a tracer provider is given (`build_provider` makes one exporting OTLP over
HTTP when an endpoint is configured); off, the hooks are never called (`Telemetry.tracing` is None)
and nothing is imported from the SDK. The provider is the application's, never the global one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

T = TypeVar("T")

W3C = TraceContextTextMapPropagator()  # stateless: reads and writes `traceparent` / `tracestate`
ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class _NodeTally:
    """Tokens of the upstream calls made inside one node span (and its nested nodes)."""

    span: Span
    parent: _NodeTally | None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        tally: _NodeTally | None = self
        while tally is not None:
            tally.input_tokens += input_tokens
            tally.output_tokens += output_tokens
            tally.calls += 1
            tally = tally.parent


# The innermost node executing in this context (a context variable: each task sees its own).
_CURRENT_NODE: ContextVar[_NodeTally | None] = ContextVar("optigraph_trace_node", default=None)


@dataclass
class Tracing:
    """Starts and ends the server's spans on one tracer provider (`shutdown` flushes it when owned)."""

    provider: Any  # an opentelemetry.sdk.trace.TracerProvider (any API TracerProvider works)
    owned: bool = False  # built by build_provider: the application shuts it down
    tracer: Any = field(init=False)

    def __post_init__(self) -> None:
        self.tracer = self.provider.get_tracer("optigraph")

    # ---- the run ------------------------------------------------------------------------------

    def start_run(self, headers: Mapping[str, str], *, run_id: str, approach: str, model: str) -> Span:
        """The run's span: a child of the client's `traceparent` when `headers` carry a valid one."""
        parent = W3C.extract(headers) if headers.get("traceparent") else None
        return self.tracer.start_span(
            "optigraph.run",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"optigraph.run_id": run_id, "optigraph.approach": approach, "gen_ai.request.model": model},
        )

    @staticmethod
    def end_run(
        span: Span, *, status: str, input_tokens: int, output_tokens: int, calls: int, error: str | None = None
    ) -> None:
        span.set_attributes(
            {
                "optigraph.status": status,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "optigraph.upstream_calls": calls,
            }
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    # ---- graph nodes --------------------------------------------------------------------------

    @contextlib.contextmanager
    def node(self, name: str, approach: str) -> Iterator[None]:
        """A node's span, current while the node runs; its token counts are its calls' sums."""
        with self.tracer.start_as_current_span(
            f"node {name}", attributes={"optigraph.node": name, "optigraph.approach": approach}
        ) as span:
            tally = _NodeTally(span=span, parent=_CURRENT_NODE.get())
            token = _CURRENT_NODE.set(tally)
            try:
                yield
            finally:
                _CURRENT_NODE.reset(token)
                span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": tally.input_tokens,
                        "gen_ai.usage.output_tokens": tally.output_tokens,
                        "optigraph.upstream_calls": tally.calls,
                    }
                )

    # ---- upstream calls -----------------------------------------------------------------------

    def start_call(self, *, node: str, backend: str, model: str, attempt: int) -> Span:
        """An upstream attempt's span, a child of the current node (or run); not yet current."""
        return self.tracer.start_span(
            f"upstream {backend}",
            kind=SpanKind.CLIENT,
            attributes={
                "optigraph.node": node,
                "optigraph.backend": backend,
                "gen_ai.request.model": model,
                "optigraph.attempt": attempt,
            },
        )

    @staticmethod
    def end_call(span: Span, *, outcome: str, input_tokens: int, output_tokens: int, error: str | None) -> None:
        span.set_attributes(
            {
                "optigraph.outcome": outcome,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
            }
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        tally = _CURRENT_NODE.get()
        if tally is not None:
            tally.add(input_tokens, output_tokens)

    def shutdown(self) -> None:
        """Flushes and stops the exporter of a provider this server built."""
        if self.owned:
            self.provider.shutdown()


def active(span: Span | None) -> contextlib.AbstractContextManager[Any]:
    """Makes `span` current for a block (nothing when None). Use it inside one coroutine only, never
    around a `yield` of an async generator, so that it is left in the context it was entered in."""
    if span is None:
        return contextlib.nullcontext()
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


async def first_within(span: Span, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """Relays `chunks`, with `span` current while the first is awaited (when a streamed request is
    sent, so its `traceparent` names the span) and not across any yield."""
    try:
        with active(span):
            first = await anext(chunks, None)
        if first is None:
            return
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def inject_trace(headers: MutableMapping[str, str]) -> None:
    """Adds `traceparent` (and `tracestate`) for the current span to outgoing `headers`; nothing when
    no span is current (tracing off)."""
    if trace.get_current_span().get_span_context().is_valid:
        W3C.inject(headers)


def trace_id_hex(span: Span) -> str:
    return trace.format_trace_id(span.get_span_context().trace_id)


def configured_endpoint(endpoint: str | None) -> str | None:
    """The OTLP endpoint to export to: `endpoint` (--otel-endpoint), else OpenTelemetry's own variables."""
    if endpoint:
        return endpoint
    return next((os.environ[name] for name in ENV_ENDPOINTS if os.environ.get(name)), None)


def build_provider(endpoint: str | None) -> Any | None:
    """A TracerProvider exporting OTLP over HTTP in batches, or None when no endpoint is configured.

    `endpoint` is a base URL (as OTEL_EXPORTER_OTLP_ENDPOINT is): spans go to `<endpoint>/v1/traces`.
    Without it the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT
    (and their headers and timeout variables) itself. The service name is `optigraph` unless
    OTEL_SERVICE_NAME says otherwise."""
    if configured_endpoint(endpoint) is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "optigraph"}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces") if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
