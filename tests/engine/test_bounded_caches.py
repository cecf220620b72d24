"""Caches keyed by what clients send stay within their bound (the n-support cache learns one entry
per backend and model name, and clients choose model names)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripted import ScriptedBackend  # noqa: E402

from optigraph.backends.router import Backends  # noqa: E402
from optigraph.config import Settings  # noqa: E402
from optigraph.core.lru import LRUCache  # noqa: E402
from optigraph.engine import runner as runner_module  # noqa: E402
from optigraph.engine.compiler import Compiler  # noqa: E402
from optigraph.engine.registry import builtin_registry  # noqa: E402
from optigraph.memory.records import NullRecorder  # noqa: E402


def test_lru_cache_never_exceeds_its_bound_and_keeps_the_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(3)
    for i in range(10):
        cache[f"k{i}"] = i
        assert len(cache) <= 3
        if i == 5:
            assert cache.get("k3") == 3  # read: k3 becomes the most recently used
    assert "k9" in cache and "k8" in cache and "k7" in cache
    assert cache.get("k0") is None and cache.get("k0", -1) == -1
    with pytest.raises(ValueError):
        LRUCache(0)


async def test_the_runners_n_support_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "N_SUPPORT_CACHE_SIZE", 4)
    settings = Settings(base_url="http://127.0.0.1:9/v1", db_url="sqlite:///unused.db")
    registry = builtin_registry()
    backends = Backends(settings)
    backend = ScriptedBackend(lambda body: "ok")
    backends.for_model = lambda model: (backend, model)  # type: ignore[method-assign]
    runner = runner_module.Runner(
        settings=settings,
        registry=registry,
        backends=backends,
        recorder=NullRecorder(),
        compiler=Compiler(registry, None),
    )
    for i in range(20):  # every request names another model, and asks for n = 2
        prep = await runner.prepare(
            {"model": f"model-{i}", "n": 2, "messages": [{"role": "user", "content": "q"}]}, client_key=None
        )
        result = await runner.complete(prep)
        assert len(result.response["choices"]) == 2
        assert len(runner.n_support) <= 4
    assert runner.n_support.get("scripted:model-19") is True  # the latest is remembered
    assert "scripted:model-0" not in runner.n_support
