"""The graph path's own cost, without HTTP: LangGraph runtime vs checkpoint writes.

    python bench/graph_overhead.py
    python bench/graph_overhead.py --runs 500

Runs requests through optigraph's Runner in-process, against a stub backend that answers at once
(no network, no recording), for a few expressions: once with an in-memory checkpointer (the
LangGraph runtime and optigraph's engine alone) and once with the SQLite checkpointer the server
uses (each finished step committed before the next starts: durability "sync"). A lone `none` takes
the passthrough fast path, skipping both; it is listed for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from langgraph.checkpoint.memory import InMemorySaver

from optigraph.backends.router import Backends
from optigraph.config import Settings
from optigraph.engine.compiler import Compiler
from optigraph.engine.registry import builtin_registry
from optigraph.engine.runner import Runner
from optigraph.memory.checkpoints import open_checkpointer

EXPRESSIONS = ("none", "re2", "none&none", "none|none", "bon", "moa")
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "8"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)


class NullRecorder:
    def run_started(self, run: Any) -> None:
        pass

    def run_finished(self, *args: Any, **kwargs: Any) -> None:
        pass

    def call(self, record: Any) -> None:
        pass


async def stub_complete(body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
    answer = orjson.loads(ANSWER)
    n = int(body.get("n") or 1)
    answer["choices"] = [{**answer["choices"][0], "index": i} for i in range(n)]
    return answer


async def measure(saver: Any, runs: int) -> dict[str, float]:
    settings = Settings(base_url="http://127.0.0.1:9/v1", db_url="sqlite:///unused.db")
    registry = builtin_registry()
    backends = Backends(settings)
    backends.http.complete = stub_complete  # type: ignore[method-assign, union-attr]
    runner = Runner(
        settings=settings,
        registry=registry,
        backends=backends,
        recorder=NullRecorder(),
        compiler=Compiler(registry, saver),
    )
    out = {}
    for expr in EXPRESSIONS:
        body = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "What is six times seven?"}],
            "optillm_approach": expr,
        }
        times = []
        for i in range(runs + 20):
            t0 = time.perf_counter()
            await runner.complete(await runner.prepare(dict(body), client_key=None))
            if i >= 20:  # the first runs compile and warm up
                times.append(time.perf_counter() - t0)
        out[expr] = statistics.median(times) * 1000.0
    await backends.aclose()
    return out


async def main_async(runs: int) -> None:
    memory = await measure(InMemorySaver(), runs)
    with tempfile.TemporaryDirectory(prefix="optigraph-bench-") as tmp:
        async with open_checkpointer(f"sqlite:///{Path(tmp) / 'checkpoints.db'}") as saver:
            sqlite = await measure(saver, runs)
    print(f"{'expression':14}{'in-memory ms':>14}{'SQLite ms':>12}{'checkpoints':>13}")
    print("-" * 53)
    for expr in EXPRESSIONS:
        print(f"{expr:14}{memory[expr]:14.2f}{sqlite[expr]:12.2f}{sqlite[expr] - memory[expr]:+13.2f}")
    print("-" * 53)
    print("median ms per request, stub backend; 'checkpoints' = SQLite minus in-memory")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200, help="timed requests per expression and checkpointer (default 200)")
    args = p.parse_args()
    print(f"optigraph graph-path overhead  machine: nproc={os.cpu_count()}  Python {platform.python_version()}")
    asyncio.run(main_async(args.runs))


if __name__ == "__main__":
    main()
