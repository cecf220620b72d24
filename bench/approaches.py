"""Multi-call approaches against a slow upstream: wall time vs dependent LLM rounds.

    python bench/approaches.py            # 5 timed runs per case
    python bench/approaches.py --quick    # 2 timed runs per case
    python bench/approaches.py bon moa    # only these expressions, default parameters

Starts the fake upstream (bench/fake_upstream.py) with a fixed latency per call (default 100 ms)
and `optigraph serve` in front of it, then sends each expression through the official `openai`
client. An approach whose independent calls (samples, critiques, ratings) go out concurrently takes
about (dependent rounds x upstream latency); one that made them one after another would take about
(calls x latency). The dependent-round and call counts come from each approach's declared
`ApproachSpec.rounds` / `.calls` with its default parameters (`a&b`: rounds add up; `a|b`: the
slower branch counts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import fake_upstream, optigraph_server  # noqa: E402

from optigraph.core.cost import evaluate  # noqa: E402
from optigraph.engine.expression import Approach, Node, Parallel, Pipeline, parse  # noqa: E402
from optigraph.engine.registry import Registry, builtin_registry  # noqa: E402

# (expression, optillm_params by approach); the last rows show that wider fan-outs cost no extra rounds.
CASES: tuple[tuple[str, dict[str, dict[str, Any]]], ...] = (
    ("none", {}),
    ("none|none", {}),
    ("none&none", {}),
    ("bon", {}),
    ("moa", {}),
    ("self_consistency", {"self_consistency": {"adaptive": False}}),  # fixed: the full fan-out, one round
    ("bon", {"bon": {"n": 8}}),
    ("moa", {"moa": {"n": 8}}),
    ("self_consistency", {"self_consistency": {"samples": 16, "adaptive": False}}),
)
MESSAGES = [{"role": "user", "content": "What is six times seven? Think it through, then answer."}]


def expected(node: Node, registry: Registry, params: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(dependent rounds, upstream calls) of an expression with the given (else default) parameters."""
    if isinstance(node, Approach):
        spec = registry.get(node.name)
        values = spec.validate_params(params.get(node.name))
        return evaluate(spec.rounds, values), evaluate(spec.calls, values)
    parts = [expected(n, registry, params) for n in (node.stages if isinstance(node, Pipeline) else node.branches)]
    calls = sum(c for _, c in parts)
    if isinstance(node, Parallel):
        return max(r for r, _ in parts), calls
    return sum(r for r, _ in parts), calls


def shown_params(node: Node, registry: Registry, params: dict[str, dict[str, Any]]) -> str:
    names = sorted({n.name for n in _leaves(node)})
    shown = []
    for name in names:
        values = registry.get(name).validate_params(params.get(name))
        params_ = {k: v for k, v in values.items() if k in ("n", "samples")}
        if params_:
            shown.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in params_.items()))
    return "; ".join(shown)


def _leaves(node: Node) -> list[Approach]:
    if isinstance(node, Approach):
        return [node]
    return [leaf for n in (node.stages if isinstance(node, Pipeline) else node.branches) for leaf in _leaves(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 timed runs per case instead of 5")
    p.add_argument("--runs", type=int, help="timed runs per case (default 5; quick 2)")
    p.add_argument("--latency", type=float, default=0.1, help="upstream latency per call in seconds (default 0.1)")
    p.add_argument(
        "expressions", nargs="*", help="expressions to run with default parameters (default: a set of cases)"
    )
    args = p.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    registry = builtin_registry()
    cases = [(e, {}) for e in args.expressions] if args.expressions else list(CASES)
    unknown = sorted({e for e, _ in cases if any(a.name not in registry for a in _leaves(parse(e)))})
    if unknown:
        print(f"not registered (skipped): {', '.join(unknown)}")
    cases = [(e, params) for e, params in cases if e not in unknown]

    import openai

    lat_ms = args.latency * 1000.0
    print(f"optigraph approaches benchmark  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine: nproc={os.cpu_count()}  Python {platform.python_version()}  upstream latency {lat_ms:.0f} ms per call"
        f"  median of {runs} runs after one warm-up"
    )
    rows = []
    with fake_upstream(args.latency) as (up_url, _), optigraph_server(up_url) as (url, _):
        direct = openai.OpenAI(base_url=up_url, api_key="bench", max_retries=0, timeout=120)
        times = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            r = direct.chat.completions.create(model="fake-model", messages=MESSAGES)
            if i:
                times.append(time.perf_counter() - t0)
        rows.append(("(direct upstream)", "", 1, 1, {1}, statistics.median(times) * 1000.0, lat_ms, len(r.choices)))
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=120)
        for expr, params in cases:
            rounds, calls = expected(parse(expr), registry, params)
            extra: dict[str, Any] = {"optillm_approach": expr}
            if params:
                extra["optillm_params"] = params
            times: list[float] = []
            made: set[int] = set()
            for i in range(runs + 1):
                t0 = time.perf_counter()
                r = client.chat.completions.create(model="fake-model", messages=MESSAGES, extra_body=extra)
                elapsed = time.perf_counter() - t0
                ext = (r.model_extra or {}).get("optigraph") or {}
                made.add(int(ext.get("upstream_calls", -1)))
                if i:  # the first run compiles the graph
                    times.append(elapsed)
            wall = statistics.median(times) * 1000.0
            ideal = rounds * lat_ms
            rows.append(
                (expr, shown_params(parse(expr), registry, params), rounds, calls, made, wall, ideal, len(r.choices))
            )
    print()
    print(
        f"{'expression':18}{'rounds':>7}{'calls':>7}{'made':>6}{'choices':>8}{'ideal ms':>10}{'wall ms':>10}"
        f"{'over ms':>9}{'wall/ideal':>11}   {'calls x lat':>11}  parameters"
    )
    print("-" * 118)
    for expr, dflt, rounds, calls, made, wall, ideal, choices in rows:
        made_s = ",".join(str(m) for m in sorted(made))
        print(
            f"{expr:18}{rounds:7d}{calls:7d}{made_s:>6}{choices:8d}{ideal:10.0f}{wall:10.1f}{wall - ideal:9.1f}"
            f"{wall / ideal:11.2f}   {calls * lat_ms:11.0f}  {dflt}"
        )
    print("-" * 118)
    print("(direct upstream): the same client calling the fake upstream itself, for the client's own overhead.")
    print("rounds/calls: declared by the approach for these parameters; made: upstream calls the response reports;")
    print("ideal = rounds x latency; 'calls x lat' is what running every call one after another would take.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
