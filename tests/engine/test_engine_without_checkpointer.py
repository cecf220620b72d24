"""The engine also runs graph approaches without a checkpointer (library use, no database)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripted import ScriptedBackend  # noqa: E402

from optigraph.backends.router import Backends  # noqa: E402
from optigraph.config import Settings  # noqa: E402
from optigraph.engine.compiler import Compiler  # noqa: E402
from optigraph.engine.registry import builtin_registry  # noqa: E402
from optigraph.engine.runner import Runner  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402


async def test_a_pipeline_runs_without_a_checkpointer() -> None:
    settings = Settings(base_url="http://127.0.0.1:9/v1", db_url="sqlite:///unused.db")
    registry = builtin_registry()
    backends = Backends(settings)
    backend = ScriptedBackend(lambda body, *_: "forty-two")
    backends.for_model = lambda model: (backend, model)  # type: ignore[method-assign]
    runner = Runner(
        settings=settings,
        registry=registry,
        backends=backends,
        recorder=NullRecorder(),
        compiler=Compiler(registry, None),
    )
    prep = await runner.prepare(
        {"model": "re2&none-m", "messages": [{"role": "user", "content": "q"}]}, client_key=None
    )
    result = await runner.complete(prep)
    assert result.response["choices"][0]["message"]["content"] == "forty-two"
    assert result.response["optigraph"]["upstream_calls"] == 2
