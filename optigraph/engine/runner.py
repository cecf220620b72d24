"""The engine: turns one chat-completions request into a run and an OpenAI-format answer.

Two paths, one behaviour:
- a lone `none` (passthrough) forwards the request body as it is (unknown fields included), relays
  stream chunks as they arrive, and records the run with one background write. It skips the graph
  runtime and the checkpointer: a single upstream call has nothing to resume, and LangGraph's
  per-invocation cost (1-2 ms measured) would double the proxy's overhead (docs/performance.md);
- every other expression runs its compiled graph with the SQL checkpointer at durability "sync"
  (each finished step, and each finished parallel branch, is stored before the next starts), so a
  crashed run can be resumed from its last finished step (engine/resume.py), or forked from any of
  its checkpoints into a new run (same module), which uses this module's Runner.

A run's usage is the LLM client's tally of every upstream call it made (core/usage.py), the same
number in the response, the stream's usage chunk and the stored run, whether it succeeded or not.

Every run executes in a task the Runner knows (`live`), so that it can be stopped: `cancel` when its
client goes (recorded `cancelled`), `interrupt_all` when the server shuts down (recorded
`interrupted`, and the client gets a 503). Both stay resumable from their checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from optigraph.backends.local import refuse_unsupported
from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.core.backend import Capabilities
from optigraph.core.context import RunContext
from optigraph.core.deltas import StreamedAnswers
from optigraph.core.ids import RunIds
from optigraph.core.llm import LLM, Budget
from optigraph.core.lru import LRUCache
from optigraph.core.spec import PluginSpec
from optigraph.core.streaming import StreamEvent, StreamSink
from optigraph.core.usage import Usage, add_usage, openai_usage
from optigraph.engine.compiler import CompiledExpression, Compiler
from optigraph.engine.expression import Approach, Node, Plugin, check_size, parse, validate
from optigraph.engine.expression import names as expression_names
from optigraph.engine.registry import Registry
from optigraph.engine.request import background_requested, check_request, forwarded_fields
from optigraph.engine.request_params import optillm_keys, proxy_fields, resolve_params
from optigraph.engine.selection import select
from optigraph.errors import InvalidRequest, OptigraphError, RunCancelled, RunInterrupted, UpstreamInvalidResponse
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.records import Recorder, RunRecord, RunResult, utcnow
from optigraph.telemetry import OFF, Telemetry
from optigraph.telemetry.tracing import active, trace_id_hex

# Which request parameter an expression came from (selection.Source), for the errors that name it.
SOURCE_PARAMS = {"model": "model", "body": "optillm_approach", "tag": "messages", "default": None}


@dataclass
class Prepared:
    """A request resolved to a run: what to run, on which backend, with which parameters."""

    run_id: str
    expression: str
    model: str  # upstream model name (approach prefix removed)
    messages: list[dict[str, Any]]
    request: dict[str, Any]  # the client's other fields, forwarded
    params: dict[str, dict[str, Any]]  # validated, by approach
    n: int
    stream: bool
    include_usage: bool
    llm: LLM
    compiled: CompiledExpression | None  # None for the passthrough fast path
    record: RunRecord
    started: float
    prior: Usage | None = None  # calls stored before a resume (engine/resume.py)
    background: bool = False  # finish even if the client goes
    stop_reason: str | None = None  # why its task was cancelled: "cancelled" (client gone) or "interrupted"
    edge: PluginSpec | None = None  # the plugin at the run's edge (it wraps everything, with admit/release)
    private: dict[str, Any] = field(default_factory=dict)  # that plugin's private state, from `admit` on
    span: Any = None  # the run's trace span while it executes (telemetry/tracing.py), when tracing is on
    trace_id: str | None = None  # of that span's trace
    status: str = "running"  # how the run ended, once recorded


def answer_choices(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "message": a["message"],
            "finish_reason": a.get("finish_reason") or "stop",
            "logprobs": a.get("logprobs"),
        }
        for i, a in enumerate(answers)
    ]


@dataclass
class ChatResult:
    run_id: str
    response: dict[str, Any]


# Whether a backend/model honours `n` is learned per model name, which clients choose: bounded.
N_SUPPORT_CACHE_SIZE = 1024
# Parsed expressions by text (clients choose the texts: bounded); a parse is pure, so it is done once.
PARSED_CACHE_SIZE = 1024
PASSTHROUGH = Approach("none")


def run_usage(prep: Prepared) -> Usage:
    """The run's usage so far (core/usage.py): calls before a resume plus every call of this client."""
    return add_usage(prep.prior, prep.llm.spent)


class Runner:
    """Runs chat-completions requests: prepares, executes (graph or passthrough), streams and records.

    `store` is the conversation store on the server's database, handed to every run's context
    (plugins that need "store" are refused by a Runner without one)."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        backends: Backends,
        recorder: Recorder,
        compiler: Compiler,
        store: ConversationStore | None = None,
        clock: Callable[[], datetime] = utcnow,
        telemetry: Telemetry = OFF,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the time leases are taken and renewed at (engine/resume.py)
        self.registry = registry
        self.backends = backends
        self.recorder = recorder
        self.compiler = compiler
        self.store = store
        self.telemetry = telemetry  # metrics and traces (recorded where runs start and end, and per call)
        self.n_support: LRUCache[str, bool] = LRUCache(N_SUPPORT_CACHE_SIZE)
        self._parsed: LRUCache[str, Node] = LRUCache(PARSED_CACHE_SIZE)
        # An approach's parameters when a request gives none (engine/request_params.py: resolve_params).
        self._default_params: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._ids = RunIds()
        self.owner = uuid.uuid4().hex  # this runner's name on the leases it takes (engine/resume.py)
        self.live: dict[asyncio.Task[Any], Prepared] = {}  # the runs executing now, by the task running each

    def context(self, run_id: str, llm: LLM, sink: StreamSink | None, *, tenant: str | None = None) -> RunContext:
        """The run context of a run on this server (what its nodes reach besides state)."""
        return RunContext(
            tenant=tenant,
            run_id=run_id,
            llm=llm,
            sink=sink,
            sandbox_level=self.settings.sandbox_level,
            settings=self.settings,
            upstreams=self.backends.named,
            store=self.store,
        )

    # ---- preparing a run ----------------------------------------------------------------------

    async def prepare(
        self,
        body: dict[str, Any],
        *,
        client_key: str | None,
        run_id: str | None = None,
        tenant: str | None = None,
        trace_headers: Mapping[str, str] | None = None,
    ) -> Prepared:
        """The run for `body` (owned by `tenant`), or a 400 naming what is wrong (expression size
        limits included). A graph not compiled yet is compiled in a worker thread (Compiler.compile_async).
        With tracing on, the run's span starts here, a child of the `traceparent` in `trace_headers` if any."""
        check_request(body, max_n=self.settings.max_n, max_tokens=self.settings.max_tokens_limit)
        limits = self.compiler.limits
        sel = select(body, known=self.registry.names(), default=self.settings.approach, limits=limits)
        ast = self.parse(sel.expression)
        validate(ast, self.registry.names())
        check_size(ast, limits, n=int(body.get("n") or self.settings.default_n), param=SOURCE_PARAMS[sel.source])
        model = sel.model or self.settings.default_model
        if model is None:
            if self.settings.base_url or self.backends.proxy is not None:
                raise InvalidRequest(
                    f"the model {body.get('model')!r} names only an approach: add the upstream "
                    f"model ({body.get('model')}-<model>) or start the server with --default-model",
                    param="model",
                    code="model_required",
                )
            model = self.settings.local_model
        run_id = run_id or self._ids.new()
        passthrough = ast == PASSTHROUGH
        llm = self.llm_for(
            model,
            run_id=run_id,
            client_key=client_key,
            limits=body.get("optigraph"),
            proxied=not passthrough and "proxy" in expression_names(ast),
        )
        backend, upstream_model = llm.backend, llm.model
        compiled = None if passthrough else await self.compiler.compile_async(ast)
        edge, private = self.edge_plugin(compiled), {}
        if edge is not None and edge.admit is not None:  # before anything of the run is stored
            body, private = await edge.admit(body, self.settings)
            sel = select(body, known=self.registry.names(), default=self.settings.approach, limits=limits)
        names = ("none",) if compiled is None else compiled.names
        optillm = optillm_keys(body)  # the body's keys that may be OptILLM fields: none in most requests
        params = self._params(body.get("optillm_params"), names, body, optillm)
        for name in names:
            self._check_needs(name, llm, backend.name, upstream_model)
        request = forwarded_fields(body)
        if optillm:  # OptILLM's fields for the proxy stay here (engine/request_params.py)
            proxy_only = proxy_fields(body, names)
            request = {k: v for k, v in request.items() if k not in proxy_only}
        stream = bool(body.get("stream"))
        expression = "none" if compiled is None else compiled.text
        n = int(body.get("n") or self.settings.default_n)
        record = RunRecord(
            id=run_id,
            expression=expression,
            model=upstream_model,
            request=body,
            checkpointed=compiled is not None,
            user=body.get("user"),
            tenant=tenant,
        )
        self._check_fields(body, llm, compiled)
        if compiled is not None:  # what a resume runs again, whatever the server's defaults are by then
            record.spec = run_spec(
                route=model, messages=sel.messages, request=request, params=params, n=n, private=private
            )
        prep = Prepared(
            run_id=run_id,
            expression=expression,
            model=upstream_model,
            messages=sel.messages,
            request=request,
            params=params,
            n=n,
            stream=stream,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            llm=llm,
            compiled=compiled,
            record=record,
            started=time.perf_counter(),
            background=background_requested(body),
            edge=edge,
            private=private,
        )
        self._trace(prep, trace_headers or {})
        return prep

    def _trace(self, prep: Prepared, headers: Mapping[str, str]) -> None:
        """Starts the run's span (tracing on), a child of the `traceparent` in `headers` if any."""
        tracing = self.telemetry.tracing
        if tracing is not None and prep.span is None:
            prep.span = tracing.start_run(headers, run_id=prep.run_id, approach=prep.expression, model=prep.model)
            prep.trace_id = trace_id_hex(prep.span)

    def edge_plugin(self, compiled: CompiledExpression | None) -> PluginSpec | None:
        """The plugin that wraps the whole expression, when it acts at the run's edge (admit/release)."""
        if compiled is None or not isinstance(compiled.ast, Plugin):
            return None
        spec = self.registry.get(compiled.ast.name)
        return spec if isinstance(spec, PluginSpec) and spec.admit is not None else None

    def client_answers(self, prep: Prepared, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The client's copy of the run's answers: what the edge plugin's `release` makes of them."""
        if prep.edge is None or prep.edge.release is None or not prep.private:
            return answers
        return prep.edge.release(answers, prep.private, self.settings)

    def parse(self, text: str) -> Node:
        """`expression.parse`, remembered (a text that does not parse raises each time)."""
        ast = self._parsed.get(text)
        if ast is None:
            ast = self._parsed[text] = parse(text)
        return ast

    def _served_fields(self, compiled: CompiledExpression | None) -> frozenset[str]:
        """The request fields the plugins of `compiled` honour themselves."""
        if compiled is None:
            return frozenset()
        specs = (self.registry.get(name) for name in compiled.names)
        return frozenset(f for spec in specs if isinstance(spec, PluginSpec) for f in spec.serves)

    def _check_needs(self, name: str, llm: LLM, backend: str, model: str) -> None:
        """A 400 when an approach or plugin needs what this server or backend does not offer."""
        spec = self.registry.get(name)
        missing = [need for need in spec.needs if not self._offers(need, llm)]
        if "store" in missing:  # the server's, not the backend's
            raise InvalidRequest(
                f"{spec.kind} {name!r} needs store (a database), which this server runs without",
                param="model",
                code="approach_unsupported",
            )
        if "mcp" in missing:  # the server's too
            raise InvalidRequest(
                f"{spec.kind} {name!r} needs MCP servers, which this server runs without (--mcp-config)",
                param="model",
                code="approach_unsupported",
            )
        if missing:
            raise InvalidRequest(
                f"{spec.kind} {name!r} needs {', '.join(missing)}, which the backend "
                f"{backend!r} does not offer for model {model!r}",
                param="model",
                code="approach_unsupported",
            )

    def _offers(self, need: str, llm: LLM) -> bool:
        return self.offers(need, llm.caps)

    def offers(self, need: str, caps: Capabilities) -> bool:
        """Whether a run on a backend with `caps` has what an approach's `need` names."""
        # What the server offers every run: outbound network (plugins check their own allow-lists),
        # the code sandbox (it fails closed at run time) and, where it has them, the database and MCP servers.
        if need in ("network", "sandbox"):
            return True
        if need == "store":
            return self.store is not None
        if need == "mcp":  # MCP servers from the operator's config file
            return self.settings.mcp_config is not None
        if need == "proxy":  # upstream providers from the operator's config file
            return self.backends.proxy is not None
        return caps.supports(need)

    def llm_for(
        self, model: str, *, run_id: str, client_key: str | None, limits: dict[str, Any] | None, proxied: bool = False
    ) -> LLM:
        """The run's LLM client: the backend serving `model` (the proxy's providers when the run's
        expression names the `proxy` plugin), the server's retries, the run's budget."""
        backends = self.backends
        backend, upstream_model = backends.for_model(model, proxied=True) if proxied else backends.for_model(model)
        return LLM(
            backend=backend,
            model=upstream_model,
            run_id=run_id,
            recorder=self.recorder,
            api_key=client_key,
            retries=self.settings.upstream_retries,
            n_support=self.n_support,  # type: ignore[arg-type]
            budget=self.budget(limits),
            telemetry=self.telemetry,
        )

    def budget(self, limits: dict[str, Any] | None) -> Budget:
        """The run's caps: the client's, never above the server's."""
        calls, tokens = self.settings.max_upstream_calls, self.settings.max_upstream_tokens
        if not limits:
            return Budget(max_calls=calls, max_tokens=tokens)
        return Budget(
            max_calls=min(limits.get("max_upstream_calls") or calls, calls),
            max_tokens=min(limits.get("max_upstream_tokens") or tokens, tokens),
        )

    def _params(
        self, raw: Any, names: tuple[str, ...], body: dict[str, Any], optillm: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidRequest("optillm_params must be an object keyed by approach name", param="optillm_params")
        unknown = [k for k in raw if k not in names]
        if unknown and len(names) == 1 and not any(k in self.registry for k in raw):
            raw = {names[0]: raw}  # a flat object is the single approach's parameters
            unknown = []
        if unknown:
            raise InvalidRequest(
                f"optillm_params names approaches not in the expression: {', '.join(unknown)}",
                param="optillm_params",
                code="invalid_approach_parameter",
            )
        return resolve_params(
            self.registry,
            names,
            requested=raw,
            body=body,
            defaults=self.settings.approach_params,
            memo=self._default_params,
            optillm=optillm,
        )

    def _check_fields(self, body: dict[str, Any], llm: LLM, compiled: CompiledExpression | None) -> None:
        """A 400 for body fields the run would otherwise accept and ignore."""
        decoding = body.get("decoding")
        if decoding is not None and decoding != "none" and not llm.caps.local:  # as the slug form is refused
            raise InvalidRequest(
                f"decoding {decoding!r} needs local, which the backend {llm.backend.name!r} does not "
                f"offer for model {llm.model!r}",
                param="decoding",
                code="approach_unsupported",
            )
        if llm.caps.local:  # what the local model cannot honour, before any call of an approach
            # A field a plugin of the expression honours itself (PluginSpec.serves) is fine here.
            served = self._served_fields(compiled)
            refuse_unsupported(
                {k: v for k, v in body.items() if k not in served}, structured=llm.caps.structured_output
            )
        if body.get("logprobs") and compiled is not None:
            raise InvalidRequest(
                f"logprobs are not supported with approach {compiled.text!r}: only 'none' returns "
                "one completion as the model sampled it",
                param="logprobs",
                code="unsupported_parameter",
            )

    # ---- non-streaming ------------------------------------------------------------------------

    async def complete(self, prep: Prepared) -> ChatResult:
        """Runs the request to its answer. Cancelled through `cancel`/`interrupt_all`, it raises
        RunCancelled or RunInterrupted (OptigraphErrors) once the run is recorded as such; cancelled
        any other way, it records the run as cancelled and lets the CancelledError through."""
        try:
            with self.tracking(prep):
                if prep.compiled is None:
                    completion = await prep.llm.forward(
                        {**prep.request, "messages": prep.messages, **({"n": prep.n} if prep.n > 1 else {})},
                        node="passthrough",
                    )
                    choices = completion.choices
                    extra = {
                        k: completion.raw[k] for k in ("system_fingerprint", "service_tier") if k in completion.raw
                    }
                    decoding = completion.raw.get("optigraph_decoding")  # a local decoding strategy's details
                    released = choices
                else:
                    self.recorder.run_started(prep.record)
                    answers, _ = await self.run_graph(prep, sink=None)
                    choices = answer_choices(answers)
                    extra, decoding = {}, None
                    client = self.client_answers(prep, answers)
                    released = choices if client is answers else answer_choices(client)
        except asyncio.CancelledError as exc:
            self.record_failure(prep, exc)
            raise self.stop_error(prep) if prep.stop_reason else exc from None
        except BaseException as exc:
            self.record_failure(prep, exc)
            raise
        usage = run_usage(prep)
        response = self.response_body(prep, choices, usage, extra)
        if decoding is not None:
            response["optigraph"]["decoding"] = decoding
        self.record_success(prep, usage, response)
        if released is not choices:  # the edge plugin's copy for the client; the stored one is above
            response = {**response, "choices": released}
        return ChatResult(run_id=prep.run_id, response=response)

    @staticmethod
    def response_body(
        prep: Prepared, choices: list[dict[str, Any]], usage: Usage, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{prep.run_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prep.model,
            "choices": choices,
            "usage": openai_usage(usage),
            **extra,
            "optigraph": {"run_id": prep.run_id, "approach": prep.expression, "upstream_calls": usage["calls"]},
        }

    async def run_graph(
        self, prep: Prepared, *, sink: StreamSink | None, resume: bool = False
    ) -> tuple[list[dict[str, Any]], Usage]:
        """Runs the n threads of the run. With `resume`, each thread continues from its last
        checkpoint (a finished thread is read back, a thread with no checkpoint starts afresh)."""
        assert prep.compiled is not None
        compiled = prep.compiled
        ctx = self.context(prep.run_id, prep.llm, sink, tenant=prep.record.tenant)

        async def one(i: int) -> dict[str, Any]:
            thread = prep.run_id if prep.n == 1 else f"{prep.run_id}.{i}"
            config = {"configurable": {"thread_id": thread}}
            state: dict[str, Any] | None = compiled.input(
                messages=prep.messages,
                request=prep.request,
                params=prep.params,
                stream_choice=(i * compiled.choices) if sink is not None and not compiled.dynamic else None,
                private=prep.private if prep.edge is not None else None,
            )
            if resume:
                snapshot = await compiled.graph.aget_state(config)
                if snapshot.values or snapshot.next:
                    if not snapshot.next:
                        return dict(snapshot.values)  # this thread had finished
                    state = None  # continue from the last checkpoint
            # durability only means something with a checkpointer (LangGraph fails on it without one)
            durability = "sync" if self.compiler.checkpointer is not None else None
            return await compiled.graph.ainvoke(state, config, context=ctx, durability=durability)

        outs = await asyncio.gather(*(one(i) for i in range(prep.n)))
        answers = [a for out in outs for a in (out.get("answers") or [])]
        if prep.edge is not None and outs and outs[0].get("private"):
            prep.private = outs[0]["private"]  # as the edge plugin's stages left it (a resumed run's, too)
        return answers, run_usage(prep)

    # ---- streaming ----------------------------------------------------------------------------

    def stream(self, prep: Prepared) -> AsyncIterator[bytes]:
        """SSE bytes for the response; always ends with `data: [DONE]`.

        The run executes in its own task (which `cancel` and `interrupt_all` stop), feeding the
        returned iterator. An OptigraphError before the first chunk is raised by it (nothing was sent
        yet, so the API answers with the error's own status, e.g. 502/504, or 503 when interrupted);
        after it, the error is sent as an event. Closing the iterator early cancels the run, unless
        the request asked to finish in the background."""
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        task = self.start(prep, self._pump(prep, queue))
        return self._relay(prep, task, queue)

    async def _pump(self, prep: Prepared, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        try:
            with active(prep.span):  # this task's context: entered and left here
                async for data in self._sse(prep):
                    queue.put_nowait(data)
        except asyncio.CancelledError:  # recorded by _sse; the reader learns why
            queue.put_nowait(self.stop_error(prep))
        except BaseException as exc:  # noqa: BLE001 (an error before the first chunk: the reader raises it)
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    async def _relay(
        self, prep: Prepared, task: asyncio.Task[None], queue: asyncio.Queue[bytes | BaseException | None]
    ) -> AsyncIterator[bytes]:
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not task.done() and not prep.background:  # the reader went away: so does the run
                self.cancel(prep, "cancelled")

    async def _sse(self, prep: Prepared) -> AsyncIterator[bytes]:
        created = int(time.time())
        base = {
            "id": f"chatcmpl-{prep.run_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": prep.model,
        }
        sent = False
        try:
            if prep.compiled is None:
                gen = self._stream_passthrough(prep, base)
            else:
                self.recorder.run_started(prep.record)
                gen = self._stream_graph(prep, base)
            async for data in gen:
                sent = True
                yield data
        except OptigraphError as exc:
            self.record_failure(prep, exc)
            if not sent:
                raise
            yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
        except asyncio.CancelledError as exc:
            self.record_failure(prep, exc)
            if prep.stop_reason != "interrupted":
                raise
            if not sent:
                raise self.stop_error(prep) from None
            yield b"data: " + orjson.dumps(self.stop_error(prep).body()) + b"\n\n"
        except Exception as exc:  # an unexpected failure still ends the stream properly and is recorded
            self.record_failure(prep, exc)
            yield b"data: " + orjson.dumps(OptigraphError(f"internal error: {type(exc).__name__}").body()) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _stream_passthrough(self, prep: Prepared, base: dict[str, Any]) -> AsyncIterator[bytes]:
        body = {
            **prep.request,
            "messages": prep.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"n": prep.n} if prep.n > 1 else {}),
        }
        decoding = None
        relayed = 0
        answers = StreamedAnswers()  # stored with the run, as a graph run's streamed answers are
        async for chunk in prep.llm.forward_stream(body, node="passthrough"):
            if chunk.get("usage"):
                if not chunk.get("choices"):
                    decoding = chunk.get("optigraph_decoding") or decoding
                    continue  # the usage chunk is sent at the end, once, if asked for
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
            chunk["id"], chunk["model"] = base["id"], base["model"]
            relayed += 1
            answers.add(chunk)
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        if not relayed:  # nothing reached the client yet, so this is still a 502 of its own
            raise UpstreamInvalidResponse(f"the upstream's stream carried no choices for model {prep.model!r}")
        total = run_usage(prep)  # every call, when n is emulated by several streams too
        if prep.include_usage:
            yield self._usage_chunk(base, total, prep, decoding)
        self.record_success(
            prep, total, {"streamed": True, "choices": answer_choices(answers.answers()), "usage": openai_usage(total)}
        )

    async def _stream_graph(self, prep: Prepared, base: dict[str, Any]) -> AsyncIterator[bytes]:
        assert prep.compiled is not None
        sink = StreamSink()
        task = asyncio.create_task(self.run_graph(prep, sink=sink))
        task.add_done_callback(lambda _: sink.close())
        started: set[int] = set()
        try:
            while True:
                event = await sink.queue.get()
                if event is None:
                    break
                yield self._delta_chunk(base, event, first=event.choice not in started)
                started.add(event.choice)
            answers, usage = await task
        finally:
            if not task.done():
                task.cancel()
                # its cancelled upstream calls are recorded before the run's usage is
                await asyncio.gather(task, return_exceptions=True)
        for i, answer in enumerate(self.client_answers(prep, answers)):
            held = sink.flush(i)  # what a plugin's stream rewriter still held back (a split placeholder)
            if i not in sink.streamed:
                delta = {k: v for k, v in answer["message"].items() if k in ("content", "tool_calls") and v}
                yield self._delta_chunk(base, StreamEvent(choice=i, delta=delta), first=True)
            elif held:
                yield self._delta_chunk(base, StreamEvent(choice=i, delta={"content": held}), first=False)
            finish = {
                **base,
                "choices": [
                    {"index": i, "delta": {}, "finish_reason": answer.get("finish_reason") or "stop", "logprobs": None}
                ],
            }
            yield b"data: " + orjson.dumps(finish) + b"\n\n"
        if prep.include_usage:
            yield self._usage_chunk(base, usage, prep)
        self.record_success(prep, usage, {"streamed": True, "choices": answers, "usage": openai_usage(usage)})

    @staticmethod
    def _delta_chunk(base: dict[str, Any], event: StreamEvent, *, first: bool) -> bytes:
        delta = {"role": "assistant", **event.delta} if first else event.delta
        chunk = {
            **base,
            "choices": [{"index": event.choice, "delta": delta, "finish_reason": None, "logprobs": event.logprobs}],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    @staticmethod
    def _usage_chunk(
        base: dict[str, Any], usage: Usage, prep: Prepared, decoding: dict[str, Any] | None = None
    ) -> bytes:
        chunk = {
            **base,
            "choices": [],
            "usage": openai_usage(usage),
            "optigraph": {
                "run_id": prep.run_id,
                "approach": prep.expression,
                "upstream_calls": usage["calls"],
                **({"decoding": decoding} if decoding is not None else {}),
            },
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    # ---- recording ----------------------------------------------------------------------------

    def record_success(self, prep: Prepared, usage: Usage, response: dict[str, Any]) -> None:
        if prep.trace_id is not None:  # links the stored run (and the client's answer) to its trace
            response.setdefault("optigraph", {})["trace_id"] = prep.trace_id
        result = RunResult(
            status="completed",
            finished_at=utcnow(),
            latency_ms=(time.perf_counter() - prep.started) * 1000.0,
            usage=dict(usage),
            response=response,
        )
        self.recorder.run_finished(prep.run_id, result, run=prep.record if prep.compiled is None else None)
        self._observe(prep, result)

    def record_failure(self, prep: Prepared, exc: BaseException) -> None:
        """Ends the run as failed, or as cancelled/interrupted when its task was cancelled."""
        status = "failed"
        if isinstance(exc, asyncio.CancelledError):
            status = prep.stop_reason or "cancelled"
            exc = self.stop_error(prep)
        body = (
            exc.body()
            if isinstance(exc, OptigraphError)
            else {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}}
        )
        result = RunResult(
            status=status,
            finished_at=utcnow(),
            latency_ms=(time.perf_counter() - prep.started) * 1000.0,
            usage=dict(run_usage(prep)),
            error=body,
        )
        self.recorder.run_finished(prep.run_id, result, run=prep.record if prep.compiled is None else None)
        self._observe(prep, result)

    def _observe(self, prep: Prepared, result: RunResult) -> None:
        """The run's outcome in the metrics, and the end of its span."""
        prep.status = result.status
        usage = result.usage
        metrics = self.telemetry.metrics
        if metrics is not None:
            metrics.run_finished(
                approach=prep.expression,
                model=prep.model,
                status=result.status,
                seconds=result.latency_ms / 1000.0,
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
            )
        span, prep.span = prep.span, None
        if span is not None:
            self.telemetry.tracing.end_run(  # type: ignore[union-attr]
                span,
                status=result.status,
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                calls=usage["calls"],
                error=None if result.error is None else str((result.error.get("error") or {}).get("message")),
            )

    # ---- the runs executing now: cancelled when their client goes, interrupted at shutdown ---------

    def start(self, prep: Prepared, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Runs `coro` (the run of `prep`) in its own task, known to `cancel` and `interrupt_all`."""
        task = asyncio.ensure_future(coro)
        self._add_live(task, prep)
        task.add_done_callback(self._forget)
        return task

    def tracking(self, prep: Prepared) -> contextlib.AbstractContextManager[None]:
        """Makes the current task the one that runs `prep` for the duration of a block (the task may
        go on to other work), with the run's span current (one is started for a resumed or forked run,
        which `prepare` did not make)."""
        return _Tracking(self, prep)

    def _add_live(self, task: asyncio.Task[Any], prep: Prepared) -> None:
        self.live[task] = prep
        if self.telemetry.metrics is not None:
            self.telemetry.metrics.run_began()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if self.live.pop(task, None) is not None and self.telemetry.metrics is not None:
            self.telemetry.metrics.run_ended()

    def cancel(self, prep: Prepared, reason: str) -> bool:
        """Cancels the run of `prep` ("cancelled": its client went; "interrupted": shutdown)."""
        tasks = [t for t, p in self.live.items() if p is prep]
        for task in tasks:
            self.cancel_task(task, reason)
        return bool(tasks)

    def cancel_task(self, task: asyncio.Future[Any], reason: str) -> None:
        """Cancels a task, recording `reason` on the run it executes (if any)."""
        prep = self.live.get(task)  # type: ignore[call-overload]
        if prep is not None and prep.stop_reason is None:
            prep.stop_reason = reason
        task.cancel()

    def interrupt_all(self) -> int:
        """Cancels every run executing now as interrupted (server shutdown); how many there were."""
        tasks = list(self.live)
        for task in tasks:
            self.cancel_task(task, "interrupted")
        return len(tasks)

    @staticmethod
    def stop_error(prep: Prepared) -> OptigraphError:
        """What the client of a cancelled run is told (when it is still there to hear it)."""
        again = (
            "send the request again"
            if prep.compiled is None  # a passthrough has no checkpoint
            else f"resume it with POST /v1/runs/{prep.run_id}/resume"
        )
        if prep.stop_reason == "interrupted":
            return RunInterrupted(f"the server is shutting down: run {prep.run_id} was interrupted; {again}")
        return RunCancelled(f"run {prep.run_id} was cancelled: its client disconnected; {again}")


def run_spec(
    *,
    route: str,
    messages: list[dict[str, Any]],
    request: dict[str, Any],
    params: dict[str, dict[str, Any]],
    n: int,
    private: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a stored run is rebuilt from (engine/resume.py): the model name it was routed by, its
    cleaned messages, forwarded fields, validated parameters and number of threads, and the edge
    plugin's private state from `admit` (the privacy plugin's: an encrypted token)."""
    spec = {"route": route, "messages": messages, "request": request, "params": params, "n": n}
    if private:
        spec["private"] = private
    return spec


class _Tracking:
    """`Runner.tracking`: a plain class rather than a generator-based context manager, which cost a
    visible share of a passthrough request's CPU."""

    __slots__ = ("_runner", "_prep", "_task", "_known", "_span")

    def __init__(self, runner: Runner, prep: Prepared) -> None:
        self._runner = runner
        self._prep = prep

    def __enter__(self) -> None:
        runner, prep = self._runner, self._prep
        task = self._task = asyncio.current_task()
        self._known = task is None or task in runner.live
        if not self._known:
            runner._add_live(task, prep)  # type: ignore[arg-type]
        runner._trace(prep, {})
        self._span = None
        if prep.span is not None:
            self._span = active(prep.span)
            self._span.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._span is not None:
                self._span.__exit__(*exc)
        finally:
            if not self._known:
                self._runner._forget(self._task)  # type: ignore[arg-type]
