"""A Runner in-process (no HTTP; no database unless the test gives a conversation store) whose every
model goes to a backend the test gives."""

from __future__ import annotations

from typing import Any

from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.core.backend import Backend
from optigraph.engine.compiler import Compiler
from optigraph.engine.registry import Registry, builtin_registry
from optigraph.engine.runner import Runner
from optigraph.memory.conversations import ConversationStore
from optigraph.memory.records import NullRecorder


def make_runner(
    backend: Backend, *, registry: Registry | None = None, store: ConversationStore | None = None, **settings: Any
) -> Runner:
    s = Settings(base_url="http://127.0.0.1:9/v1", db_url="sqlite:///unused.db", **settings)
    registry = registry or builtin_registry()
    backends = Backends(s)
    backends.for_model = lambda model: (backend, model)  # type: ignore[method-assign]
    return Runner(
        settings=s,
        registry=registry,
        backends=backends,
        recorder=NullRecorder(),
        compiler=Compiler(registry, None, default=s.approach),
        store=store,
    )


async def ask(runner: Runner, body: dict[str, Any]) -> dict[str, Any]:
    return (await runner.complete(await runner.prepare(body, client_key=None))).response


async def ask_streamed(runner: Runner, body: dict[str, Any]) -> list[dict[str, Any]]:
    import orjson

    chunks = []
    async for data in runner.stream(await runner.prepare({**body, "stream": True}, client_key=None)):
        payload = data.removeprefix(b"data: ").strip()
        if payload != b"[DONE]":
            chunks.append(orjson.loads(payload))
    return chunks


def streamed_text(chunks: list[dict[str, Any]], choice: int = 0) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or ""
        for ch in chunks
        for c in ch.get("choices") or []
        if c.get("index") == choice
    )
