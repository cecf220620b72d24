"""The FastAPI application: built from Settings, owning the engine, database and backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from optigraph import __version__
from optigraph.api import approaches, chat, docs, health, models, runs, spl, ui
from optigraph.api.access_log import AccessLog
from optigraph.api.auth import UISessions
from optigraph.api.errors import install_error_handlers
from optigraph.api.limits import BodyLimit
from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.engine.compiler import Compiler
from optigraph.engine.expression import Limits, check_size, parse, validate
from optigraph.engine.loading import load_registry
from optigraph.engine.registry import Registry
from optigraph.engine.runner import Runner
from optigraph.memory.checkpoints import open_checkpointer
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.db import open_database
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.queries import count_runs
from optigraph.memory.recorder import SqlRecorder

log = logging.getLogger("optigraph")


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    if registry is None:  # the built-ins plus entry points and --approaches-dir (a clash fails the start)
        registry = load_registry(approaches_dir=settings.approaches_dir, entry_points=settings.approach_entry_points)
    limits = Limits(
        max_chars=settings.max_expression_chars,
        max_nodes=settings.max_expression_nodes,
        max_choices=settings.max_choices,
    )
    default = parse(settings.approach)  # a bad default fails at start, not per request
    validate(default, registry.names())
    check_size(default, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade_schema, settings.db_url)
        db = open_database(settings.db_url)
        recorder = SqlRecorder(db)
        recorder.start()
        await _report_unfinished_runs(db)
        backends = Backends(settings)
        warmup: asyncio.Task[Any] | None = None
        if settings.base_url is None:
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
                compiler=Compiler(registry, saver, default=settings.approach, limits=limits),
                store=ConversationStore(db),
            )
            app.state.backends = backends
            app.state.db = db
            app.state.recorder = recorder
            try:
                yield
            finally:
                if warmup is not None and not warmup.done():
                    warmup.cancel()
                await recorder.aclose()
                await backends.aclose()
                await db.dispose()

    app = FastAPI(
        title="optigraph",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="OpenAI-compatible optimizing inference proxy: inference-time techniques as "
        "checkpointed LangGraph graphs.",
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.ui_sessions = (
        None
        if not settings.api_key
        else UISessions(
            api_key=settings.api_key,
            ttl_s=settings.ui_session_ttl_s,
            **({"secret": settings.ui_session_secret.encode()} if settings.ui_session_secret else {}),
        )
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health.router)
    docs.install(app)  # /docs and /redoc with their assets served from a package: they work offline
    app.include_router(runs.router)
    app.include_router(approaches.router)
    app.include_router(spl.router)
    app.include_router(ui.router)
    _document_request_schema(app)
    return app


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
    """The chat route reads its raw body (to forward unknown fields); its schema is added here."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = original()
        schema, defs = chat.request_schema()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs)
        components["ChatCompletionRequest"] = schema
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
