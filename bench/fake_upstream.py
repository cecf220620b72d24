"""A fake OpenAI-compatible upstream for the benchmarks: tests/upstream.py's app served by uvicorn.

    python bench/fake_upstream.py --port 9000 --latency 0.1

It answers every chat completion after `--latency` seconds with a short fixed answer (a bare rating
when asked for one, so rating nodes read a score). Nothing is logged per request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import uvicorn  # noqa: E402
from upstream import UpstreamLog, make_app  # noqa: E402


class _Discard(list):
    """A list that keeps nothing: the benchmark upstream must not grow with the request count."""

    def append(self, item: Any) -> None:
        pass


def bench_responder(body: dict[str, Any], index: int) -> str:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, str) and "rating" in content.lower():
        return "8"
    return "The answer is 42."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer (default 0)")
    args = p.parse_args()
    log = UpstreamLog(bodies=_Discard(), headers=_Discard())
    app = make_app(bench_responder, latency=args.latency, log=log)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools"
    )


if __name__ == "__main__":
    main()
