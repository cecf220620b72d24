"""The FastAPI application: built from Settings, owning the engine, database and backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from optigraph import __version__
from optigraph.api import approaches, chat, models, runs, ui
from optigraph.api.errors import install_error_handlers
from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.engine.compiler import Compiler
from optigraph.engine.expression import parse, validate
from optigraph.engine.loading import load_registry
from optigraph.engine.registry import Registry
from optigraph.engine.runner import Runner
from optigraph.memory.checkpoints import open_checkpointer
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.db import create_engine_for
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.recorder import SqlRecorder

log = logging.getLogger("optigraph")


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    if registry is None:  # the built-ins plus entry points and --approaches-dir (a clash fails the start)
        registry = load_registry(approaches_dir=settings.approaches_dir, entry_points=settings.approach_entry_points)
    validate(parse(settings.approach), registry.names())  # a bad default fails at start, not per request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade_schema, settings.db_url)
        db = create_engine_for(settings.db_url)
        recorder = SqlRecorder(db)
        recorder.start()
        backends = Backends(settings)
        warmup: asyncio.Task[Any] | None = None
        if settings.base_url is None:
            local = backends.local()
            warmup = asyncio.create_task(local.warmup())  # /health answers while the model loads
            app.state.local_status = lambda: local.status
            app.state.local_models = local.describe
        async with open_checkpointer(settings.db_url) as saver:
            app.state.runner = Runner(settings=settings, registry=registry, backends=backends, recorder=recorder,
                                      compiler=Compiler(registry, saver, default=settings.approach),
                                      store=ConversationStore(db))
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

    app = FastAPI(title="optigraph", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible optimizing inference proxy: inference-time techniques as "
                              "checkpointed LangGraph graphs.")
    app.state.settings = settings
    app.state.registry = registry
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(runs.router)
    app.include_router(approaches.router)
    app.include_router(ui.router)
    _document_request_schema(app)
    return app


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
