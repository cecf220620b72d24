"""The FastAPI application: built from Settings, owning the engine, database and backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from optigraph import __version__
from optigraph.api import (
    approaches,
    chat,
    completions,
    docs,
    health,
    metrics,
    models,
    oauth,
    responses,
    runs,
    spl,
    ui,
    ui_compare,
)
from optigraph.api.access import Access
from optigraph.api.access_log import AccessLog
from optigraph.api.admission import RunSlots
from optigraph.api.auth import UISessions
from optigraph.api.errors import document_errors, install_error_handlers
from optigraph.api.limits import BodyLimit
from optigraph.api.retention import RetentionTask
from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.engine.compiler import Compiler
from optigraph.engine.expression import Limits, check_size, parse, validate
from optigraph.engine.loading import load_registry
from optigraph.engine.registry import Registry
from optigraph.engine.request_params import check_defaults
from optigraph.engine.runner import Runner
from optigraph.memory.checkpoints import open_checkpointer
from optigraph.memory.conversation_log import ConversationLog
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.db import open_database
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.queries import count_runs
from optigraph.memory.recorder import SqlRecorder
from optigraph.telemetry import Metrics, Telemetry, Tracing
from optigraph.telemetry.tracing import build_provider

log = logging.getLogger("optigraph")


class App(FastAPI):
    """FastAPI, with the chat route served before the framework's own middlewares (chat.ChatFirst)."""

    def build_middleware_stack(self) -> Any:
        rest = super().build_middleware_stack()
        # The chat route enters the stack at its outermost app middleware (the same instances the
        # other routes pass through): below the framework's layers, each of which wraps the next as `.app`.
        outermost = self.user_middleware[0].cls
        layer: Any = rest
        while not isinstance(layer, outermost):
            layer = getattr(layer, "app", None)
            if layer is None:  # not found: everything through the whole stack
                return rest
        return chat.ChatFirst(layer, rest)


def create_app(settings: Settings, *, registry: Registry | None = None, tracer_provider: Any = None) -> FastAPI:
    """The application. Traces go to `tracer_provider` when given (tests pass one with an in-memory
    exporter), else to the OTLP endpoint configured (--otel-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT), else
    nowhere."""
    if registry is None:  # the built-ins plus entry points and --approaches-dir (a clash fails the start)
        registry = load_registry(
            approaches_dir=settings.approaches_dir,
            entry_points=settings.approach_entry_points,
            plugins_dir=settings.plugins_dir,
        )
    limits = Limits(
        max_chars=settings.max_expression_chars,
        max_nodes=settings.max_expression_nodes,
        max_choices=settings.max_choices,
    )
    default = parse(settings.approach)  # a bad default fails at start, not per request
    validate(default, registry.names())
    check_size(default, limits)
    if settings.list_approach_models:  # a bad prefix fails at start too
        models.check_listed_approaches(settings.model_list_approaches, registry)
    check_defaults(settings.approach_params, registry)  # server-wide approach parameters, checked once

    telemetry = _telemetry(settings, registry, tracer_provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade_schema, settings.db_url)
        db = open_database(settings.db_url)
        recorder: SqlRecorder | ConversationLog = SqlRecorder(db, store_prompts=settings.store_prompts)
        recorder.start()
        stored = recorder
        if settings.log_conversations:  # OptILLM-format JSONL of every finished run, read back from the table
            recorder = ConversationLog(stored, db, settings.conversation_log_dir)
            recorder.start()
        await _report_unfinished_runs(db)
        access.db = db
        slots = RunSlots(db, access)
        app.state.run_slots = slots
        background = [asyncio.create_task(slots.renew_forever(), name="optigraph-run-slots")]
        if settings.retention_days > 0:
            retention = RetentionTask(db, recorder, max_age_days=settings.retention_days)
            background.append(asyncio.create_task(retention.run_forever(), name="optigraph-retention"))
        backends = Backends(settings)
        warmup: asyncio.Task[Any] | None = None
        if backends.upstream is None:  # neither a base URL nor a proxy: the local model serves
            local = backends.local()
            warmup = asyncio.create_task(local.warmup())  # /health answers while the model loads
            app.state.local_status = lambda: local.status
            app.state.local_models = local.describe
        async with open_checkpointer(settings.db_url) as saver:
            app.state.runner = Runner(
                settings=settings,
                registry=registry,
                backends=backends,
                recorder=recorder,
                # without prompt text stored, graphs keep no checkpoints either (their state is the conversation)
                compiler=Compiler(
                    registry,
                    saver if settings.store_prompts else None,
                    default=settings.approach,
                    limits=limits,
                    tracing=telemetry.tracing,
                ),
                # without prompt text stored, there is no conversation memory (it is prompt text)
                store=ConversationStore(db) if settings.store_prompts else None,
                telemetry=telemetry,
            )
            app.state.backends = backends
            app.state.db = db
            app.state.recorder = recorder
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if warmup is not None and not warmup.done():
                    warmup.cancel()
                if recorder is not stored:
                    await recorder.aclose()  # logs what is pending (needs the table writer still running)
                await stored.aclose()
                await backends.aclose()
                await db.dispose()
                if telemetry.tracing is not None:  # the last spans are exported before the process ends
                    await asyncio.to_thread(telemetry.tracing.shutdown)

    app = App(
        title="optigraph",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # optigraph traces, counts and logs requests itself (telemetry/); the framework's own
        # OpenTelemetry bridge would add a second span per request and look up its settings every time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        description="OpenAI-compatible optimizing inference proxy: inference-time techniques as "
        "checkpointed LangGraph graphs.",
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.telemetry = telemetry
    access = Access.from_settings(settings)
    app.state.access = access
    app.state.ui_sessions = UISessions(
        api_key=settings.api_key,
        ttl_s=settings.ui_session_ttl_s,
        **({"secret": settings.ui_session_secret.encode()} if settings.ui_session_secret else {}),
    )
    install_error_handlers(app)
    app.add_middleware(chat.ChatEndpoint)  # added first: the innermost, inside every other middleware
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=telemetry.metrics, log_prompts=settings.log_prompts)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    docs.install(app)  # /docs and /redoc with their assets served from a package: they work offline
    app.include_router(runs.router)
    app.include_router(approaches.router)
    app.include_router(spl.router)
    app.include_router(ui.router)
    app.include_router(oauth.router)
    app.include_router(ui_compare.router)
    _document_request_schema(app)
    return app


def _telemetry(settings: Settings, registry: Registry, tracer_provider: Any) -> Telemetry:
    """Metrics unless --metrics off; tracing when a provider is given or an OTLP endpoint configured."""
    metrics = None
    if settings.metrics:
        models = frozenset(m for m in (settings.default_model, settings.local_model) if m)
        metrics = Metrics(approaches=frozenset(registry.names()), models=models, max_names=settings.metrics_max_names)
    tracing = None
    if tracer_provider is not None:
        tracing = Tracing(tracer_provider)
    elif (built := build_provider(settings.otel_endpoint)) is not None:
        tracing = Tracing(built, owned=True)
    return Telemetry(metrics=metrics, tracing=tracing)


async def _report_unfinished_runs(db: Any) -> None:
    """Says at start how many runs are stored as `running`: a crash or a kill left them so (or another
    server on the same database is running them), and how to continue them."""
    try:
        count = await count_runs(db, status="running")
    except Exception as exc:  # a start is not refused for this; the first request will say what is wrong
        log.warning("could not count unfinished runs: %s: %s", type(exc).__name__, exc)
        return
    if count:
        log.warning(
            "%d run%s stored as running (interrupted by a crash or a kill, unless another server on this "
            "database is running them): list them with `optigraph runs list --status running`, continue "
            "one with `optigraph runs resume RUN_ID` or POST /v1/runs/RUN_ID/resume",
            count,
            "" if count == 1 else "s",
        )


def _document_request_schema(app: FastAPI) -> None:
    """The chat and responses routes read their raw body (to forward unknown fields); their schemas are added here."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = original()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for name, (schema, defs) in (
            ("ChatCompletionRequest", chat.request_schema()),
            ("ResponsesRequest", responses.request_schema()),
        ):
            components.update(defs)
            components[name] = schema
        document_errors(spec)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
