"""OpenTelemetry spans of real requests through a real server, captured with the SDK's in-memory
exporter: the run, each graph node and each upstream call, their parents, names and token counts;
the client's `traceparent` honoured and the trace carried on to the upstream."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from api_stack import Stack, last_user_text, start_stack
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from upstream import HTTPFailure, ServerThread, echo_responder, make_app, serve_process

from optigraph.engine.registry import builtin_registry

HELLO = [{"role": "user", "content": "hello there"}]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db = tmp_path_factory.mktemp("tracing") / "o.db"
    with start_stack(db, default_model="fake-model", tracer_provider=provider) as s:
        yield s, exporter


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def _run_spans(exporter: InMemorySpanExporter, run_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The run's span and every span of its trace below it."""
    spans = exporter.get_finished_spans()
    [run] = [s for s in spans if s.name == "optigraph.run" and s.attributes["optigraph.run_id"] == run_id]
    return run, [s for s in spans if s.context.trace_id == run.context.trace_id and s is not run]


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _tokens(span: ReadableSpan) -> tuple[Any, Any]:
    return span.attributes["gen_ai.usage.input_tokens"], span.attributes["gen_ai.usage.output_tokens"]


def test_a_multi_node_run_is_one_trace_under_the_clients_traceparent(
    traced: tuple[Stack, InMemorySpanExporter],
) -> None:
    stack, exporter = traced
    stack.reset()
    resp = stack.client().chat.completions.create(
        model="moa-fake-model", messages=HELLO, extra_headers={"traceparent": TRACEPARENT}
    )
    info = resp.model_extra["optigraph"]
    run, below = _run_spans(exporter, info["run_id"])

    # the run: a child of the client's span, in the client's trace, with the run's totals
    assert _hex(run.context.trace_id, 32) == TRACE_ID and _hex(run.parent.span_id, 16) == CLIENT_SPAN
    assert run.kind == SpanKind.SERVER
    assert run.attributes["optigraph.approach"] == "moa" and run.attributes["gen_ai.request.model"] == "fake-model"
    assert run.attributes["optigraph.status"] == "completed"
    assert _tokens(run) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert run.attributes["optigraph.upstream_calls"] == info["upstream_calls"] == 3
    assert info["trace_id"] == TRACE_ID  # the answer names its trace, and so does the stored run
    assert stack.run(info["run_id"])["response"]["optigraph"]["trace_id"] == TRACE_ID

    # the nodes of moa, in order, each a child of the run, each with the tokens of its calls
    nodes = sorted(_children(below, run), key=lambda s: s.start_time)
    assert [s.name for s in nodes] == ["node sample", "node critique", "node aggregate"]
    assert [s.attributes["optigraph.node"] for s in nodes] == ["sample", "critique", "aggregate"]
    assert {s.attributes["optigraph.approach"] for s in nodes} == {"moa"}
    calls = [c for node in nodes for c in _children(below, node)]
    assert len(calls) == 3 and len(below) == 6  # nothing else in the trace
    for node in nodes:
        [call] = _children(below, node)
        assert call.name == "upstream openai" and call.kind == SpanKind.CLIENT
        assert call.attributes["optigraph.node"] == node.attributes["optigraph.node"]
        assert call.attributes["gen_ai.request.model"] == "fake-model"
        assert call.attributes["optigraph.outcome"] == "ok"
        assert _tokens(call) == _tokens(node) and call.attributes["gen_ai.usage.output_tokens"] > 0
    assert sum(_tokens(c)[0] for c in calls) == resp.usage.prompt_tokens

    # the upstream got the trace: each request's traceparent names the span of its own call
    sent = [h["traceparent"] for h in stack.log.headers]
    assert len(sent) == 3
    assert {tp.split("-")[1] for tp in sent} == {TRACE_ID}
    assert {tp.split("-")[2] for tp in sent} == {_hex(c.context.span_id, 16) for c in calls}


def test_a_streamed_passthrough_without_traceparent_starts_its_own_trace(
    traced: tuple[Stack, InMemorySpanExporter],
) -> None:
    stack, exporter = traced
    stack.reset()
    with stack.client().chat.completions.with_streaming_response.create(
        model="fake-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as raw:
        run_id = raw.headers["x-optigraph-run-id"]
        trace_id = raw.headers["x-optigraph-trace-id"]
        chunks = list(raw.parse())
    [usage] = [c.usage for c in chunks if c.usage]
    run, below = _run_spans(exporter, run_id)
    assert run.parent is None and run.attributes["optigraph.approach"] == "none"
    assert _hex(run.context.trace_id, 32) == trace_id
    assert _tokens(run) == (usage.prompt_tokens, usage.completion_tokens)
    [call] = below
    assert call.parent.span_id == run.context.span_id and call.attributes["optigraph.node"] == "passthrough"
    [tp] = [h["traceparent"] for h in stack.log.headers]
    assert tp.split("-")[1:3] == [_hex(run.context.trace_id, 32), _hex(call.context.span_id, 16)]


def test_a_pipeline_nests_each_approach_nodes_under_its_stage(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    stack.reset()
    resp = stack.client().chat.completions.create(model="re2&moa-fake-model", messages=HELLO)
    run, below = _run_spans(exporter, resp.model_extra["optigraph"]["run_id"])
    stages = _children(below, run)
    assert all(s.name.startswith("node ") for s in stages)
    moa_nodes = [s for s in below if s.attributes.get("optigraph.approach") == "moa"]
    assert sorted(s.attributes["optigraph.node"] for s in moa_nodes) == ["aggregate", "critique", "sample"]
    [moa_stage] = {s.parent.span_id for s in moa_nodes}  # one stage span holds all of moa's nodes
    holder = next(s for s in below if s.context.span_id == moa_stage)
    assert holder in stages or any(holder in _children(below, s) for s in stages)
    calls = [s for s in below if s.name.startswith("upstream ")]
    assert len(calls) == resp.model_extra["optigraph"]["upstream_calls"]
    assert sum(_tokens(s)[1] for s in stages) == resp.usage.completion_tokens  # stages sum their nodes


def test_no_tracing_configured_means_no_traceparent_upstream(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db", default_model="fake-model") as stack:
        resp = stack.client().chat.completions.create(
            model="fake-model", messages=HELLO, extra_headers={"traceparent": TRACEPARENT}
        )
        assert "trace_id" not in resp.model_extra["optigraph"]
        assert "traceparent" not in stack.log.headers[0]


def test_otel_endpoint_exports_the_spans_over_otlp_http(tmp_path: Path) -> None:
    """`serve --otel-endpoint URL`: the spans reach an OTLP/HTTP receiver at URL/v1/traces (flushed at
    shutdown at the latest), with the service name and the run id."""
    received: list[bytes] = []

    async def traces(request: Request) -> Response:
        received.append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    collector = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    with ServerThread(make_app()) as up, ServerThread(collector) as otlp:
        proc, url = serve_process(tmp_path / "o.db", up.url, "--otel-endpoint", otlp.url)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
            resp = client.chat.completions.create(model="fake-model", messages=HELLO)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    spans = {}
    for body in received:
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans[span.name] = (service, {a.key: a.value for a in span.attributes}, span)
    assert set(spans) == {"optigraph.run", "upstream openai"}
    service, attributes, run = spans["optigraph.run"]
    assert service == "optigraph"
    assert attributes["optigraph.run_id"].string_value == resp.model_extra["optigraph"]["run_id"]
    assert run.trace_id.hex() == resp.model_extra["optigraph"]["trace_id"]
    assert spans["upstream openai"][2].parent_span_id == run.span_id


APPROACHES = sorted(s.name for s in builtin_registry().specs.values() if not {"local", "mcp", "proxy"} & set(s.needs))


@pytest.mark.parametrize("approach", APPROACHES)
def test_every_approach_runs_traced_with_each_call_under_the_run(
    traced: tuple[Stack, InMemorySpanExporter], approach: str
) -> None:
    """Node spans wrap every kind of node (parallel sends, sub-graphs, plugins' stages) without
    changing what the run does; every upstream call's span descends from the run's."""
    stack, exporter = traced
    stack.reset()
    # a long guard (not a measure): a plugin's first request imports its libraries (privacy: presidio)
    client = openai.OpenAI(base_url=stack.base_url, api_key="x", max_retries=0, timeout=300)
    resp = client.chat.completions.create(
        model=f"{approach}-fake-model",
        messages=[{"role": "user", "content": "What is 6 times 7? End with: The answer is N."}],
        max_tokens=256,
        extra_body={"optillm_params": {"mars": {"lightweight": True}}} if approach == "mars" else None,
    )
    info = resp.model_extra["optigraph"]
    run, below = _run_spans(exporter, info["run_id"])
    assert run.attributes["optigraph.status"] == "completed"
    by_id = {s.context.span_id: s for s in below}
    calls = [s for s in below if s.name.startswith("upstream ")]
    assert len(calls) == info["upstream_calls"] == len(stack.log.bodies)
    for call in calls:
        span = call  # up through the nodes to the run (a passthrough's call is the run's own child)
        while span.parent.span_id != run.context.span_id:
            span = by_id[span.parent.span_id]
            assert span.name.startswith("node ")
        assert (span is call) == (approach == "none")
    assert _tokens(run) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)


def test_a_resumed_run_is_traced_too(traced: tuple[Stack, InMemorySpanExporter]) -> None:
    """The failed attempt and the resume are two traces of the same run id, each with its nodes and
    calls under its run span; the resumed answer names the second."""
    stack, exporter = traced
    stack.reset()
    broken = {"on": True}

    def fails_stage_two(body: dict[str, Any], index: int) -> Any:
        if broken["on"] and last_user_text(body) == "echo: q1":
            return HTTPFailure(400, "stage two is broken")
        return echo_responder(body, index)

    stack.script.fn = fails_stage_two
    with stack.http() as http:
        failed = http.post(
            "/v1/chat/completions",
            json={"model": "none&none-fake-model", "messages": [{"role": "user", "content": "q1"}]},
        )
        run_id = failed.headers["x-optigraph-run-id"]
        assert failed.status_code == 400 and stack.run(run_id)["status"] == "failed"
        broken["on"] = False
        resumed = http.post(f"/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    runs = [s for s in exporter.get_finished_spans() if s.attributes.get("optigraph.run_id") == run_id]
    assert [r.attributes["optigraph.status"] for r in runs] == ["failed", "completed"]
    assert resumed.json()["optigraph"]["trace_id"] == _hex(runs[1].context.trace_id, 32)
    for run in runs:
        below = [s for s in exporter.get_finished_spans() if s.context.trace_id == run.context.trace_id]
        calls = [s for s in below if s.name.startswith("upstream ")]
        assert calls and all(c.parent is not None for c in calls)
        assert any(s.name.startswith("node ") and s.parent.span_id == run.context.span_id for s in below)
