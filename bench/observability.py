"""What metrics and tracing cost on the passthrough path: optigraph with both off vs both on, in one run.

    python bench/observability.py            # full run
    python bench/observability.py --quick    # short run

Starts, on loopback free ports, the fake upstream (bench/fake_upstream.py, no added latency), an OTLP
sink that accepts and discards traces (bench/otlp_sink.py), and three `optigraph serve` processes in
front of the upstream: `off` (--metrics off, no tracing), `metrics` (the default: /metrics on, no
tracing) and `on` (metrics, and every span exported over OTLP/HTTP to the sink). It measures them as
bench/passthrough.py does (sequential latency in rotating blocks, throughput at 64 connections in
alternating rounds) with the CPU each server process spends per request in both phases, and prints
each against `off`. The sequential CPU ratio is the steadiest figure on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import BENCH, cpu_seconds, fake_upstream, free_port, optigraph_server, stop, wait_http  # noqa: E402
from passthrough import CONNECTIONS, Client, measure_throughput, pct  # noqa: E402

TARGETS = ("off", "metrics", "on")


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """Yields the sink's base URL (what --otel-endpoint takes)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def measure_sequential(
    urls: dict[str, str], pids: dict[str, int], *, requests: int, block: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per request of each target, and its server's CPU ms per request, over `requests`
    sequential requests each, in blocks of `block` whose order rotates (noise hits every target alike)."""
    clients = {name: Client(url) for name, url in urls.items()}
    names = list(urls)
    latency: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    try:
        for client in clients.values():
            for _ in range(warmup):
                client.post()
        for i in range(max(1, requests // block)):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                before = cpu_seconds(pids[name])
                latency[name].extend(clients[name].post() for _ in range(block))
                cpu[name] += cpu_seconds(pids[name]) - before
    finally:
        for client in clients.values():
            client.close()
    return latency, {name: 1000.0 * cpu[name] / len(latency[name]) for name in names}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (400 requests, 3 s load rounds)")
    p.add_argument("--requests", type=int, help="sequential requests per target (default 2000; quick 400)")
    p.add_argument("--seconds", type=float, help="seconds per load round (default 10; quick 3)")
    p.add_argument("--rounds", type=int, help="load rounds per target (default 3; quick 1)")
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator even if wrk is installed")
    args = p.parse_args()
    requests = args.requests or (400 if args.quick else 2000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk

    print(f"optigraph observability overhead  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: nproc={os.cpu_count()}  {platform.machine()}  Python {platform.python_version()}")
    print(f"load generator: {'wrk (1 thread)' if use_wrk else 'asyncio aiohttp client (wrk not found)'}")
    with contextlib.ExitStack() as stack:
        upstream, _ = stack.enter_context(fake_upstream(0.0))
        sink = stack.enter_context(otlp_sink())
        flags = {"off": ("--metrics", "off"), "metrics": (), "on": ("--otel-endpoint", sink)}
        urls, pids = {}, {}
        for name in TARGETS:
            urls[name], proc = stack.enter_context(optigraph_server(upstream, *flags[name]))
            pids[name] = proc.pid
        print(f"sequential: {requests} requests per target, in rotating blocks of 50 ...", flush=True)
        lat, seq_cpu = measure_sequential(
            urls, pids, requests=requests, block=min(50, requests), warmup=50 if args.quick else 200
        )
        print(f"throughput: {CONNECTIONS} connections, {rounds} x {seconds:.0f} s per target ...", flush=True)
        tp = measure_throughput(
            urls, pids, rounds=rounds, seconds=seconds, warmup_s=2.0 if args.quick else 3.0, use_wrk=use_wrk
        )

    med = {n: statistics.median(lat[n]) * 1000.0 for n in TARGETS}
    p90 = {n: pct(lat[n], 0.9) * 1000.0 for n in TARGETS}
    rps = {n: statistics.median(tp[n]["rps"]) for n in TARGETS}
    cpu = {n: statistics.median(tp[n]["cpu_ms_per_req"]) if tp[n]["cpu_ms_per_req"] else float("nan") for n in TARGETS}

    def row(label: str, values: dict[str, float], fmt: str) -> None:
        print(f"{label:34}" + "".join(format(values[n], fmt).rjust(12) for n in TARGETS))

    print()
    print(f"{'':34}" + "".join(n.rjust(12) for n in TARGETS))
    print("-" * 70)
    row("latency median (ms)", med, ".3f")
    row("  added to off (ms)", {n: med[n] - med["off"] for n in TARGETS}, "+.3f")
    row("latency p90 (ms)", p90, ".3f")
    row(f"throughput, {CONNECTIONS} conn (req/s)", rps, ".0f")
    row("  ratio to off", {n: rps[n] / rps["off"] for n in TARGETS}, ".3f")
    row("CPU per request, sequential (ms)", seq_cpu, ".3f")
    row("  ratio to off", {n: seq_cpu[n] / seq_cpu["off"] for n in TARGETS}, ".3f")
    row("CPU per request, loaded (ms)", cpu, ".3f")
    row("  ratio to off", {n: cpu[n] / cpu["off"] for n in TARGETS}, ".3f")
    print("-" * 70)
    for n in TARGETS:
        print(f"rounds req/s {n:>8}: {', '.join(f'{x:.0f}' for x in tp[n]['rps'])}")
    print(f"non-2xx or socket errors during load: {sum(sum(tp[n]['errors']) for n in TARGETS):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
