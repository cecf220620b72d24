"""Load: 64 concurrent clients for 60 s against `optigraph serve` in front of a local fake upstream.

    python bench/load.py                      # 64 clients, 60 s (docs/reliability.md#load)
    python bench/load.py --clients 16 --duration 10 --out result.json

Starts, on loopback free ports, the fake upstream (bench/fake_upstream.py, `--latency` seconds per
answer, default 0.05, standing in for a model) and `optigraph serve` in front of it on a SQLite
file in a temporary directory. After a warm-up, each client sends requests back to back for the
duration, cycling through four kinds: passthrough (`fake-model`) and a two-stage pipeline
(`none&none-fake-model`, two upstream calls, checkpointed), each non-streamed and streamed.

It prints (and writes with --out, as JSON): requests, errors (any status but 200, a transport error,
or a stream that did not end with `[DONE]`; target 0), latency p50/p99 per kind and overall, the
server's resident memory (VmRSS) after the warm-up, every 10 s during the run and at the end, and the
runs stored: every request must have its run, none left `running`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import fake_upstream, free_port, stop, wait_http  # noqa: E402

KINDS = (
    ("passthrough", "fake-model", False),
    ("passthrough-stream", "fake-model", True),
    ("pipeline", "none&none-fake-model", False),
    ("pipeline-stream", "none&none-fake-model", True),
)


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(session: aiohttp.ClientSession, url: str, kind: tuple[str, str, bool], i: int) -> str | None:
    """Sends one request; None when it succeeded, else what went wrong."""
    _, model, stream = kind
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": f"question {i}"}]}
    try:
        async with session.post(url + "/chat/completions", json=body) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"status {resp.status}: {data[:200]!r}"
            if stream and not data.rstrip().endswith(b"data: [DONE]"):
                return "stream did not end with [DONE]"
            if stream and b'"error"' in data:
                return f"error event: {data[-300:]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def drive(url: str, clients: int, duration_s: float, pid: int) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {k[0]: [] for k in KINDS}
    errors: list[str] = []
    rss_samples: list[float] = []
    stop_at = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def client(c: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                kind = KINDS[(c + n) % len(KINDS)]  # every client cycles through the kinds
                t0 = time.perf_counter()
                problem = await one(session, url, kind, c * 1_000_000 + n)
                if problem is None:
                    latencies[kind[0]].append(time.perf_counter() - t0)
                else:
                    errors.append(f"{kind[0]}: {problem}")
                n += 1

        async def sample() -> None:
            while time.monotonic() < stop_at:
                rss_samples.append(round(rss_mib(pid), 1))
                await asyncio.sleep(10)

        await asyncio.gather(sample(), *(client(c) for c in range(clients)))
    return {"latencies": latencies, "errors": errors, "rss_samples_mib": rss_samples}


def stored(db: Path, expected: int) -> dict[str, int]:
    """Run statuses in the database, once the recorder has written them all (it writes in the background)."""
    deadline = time.monotonic() + 60
    while True:
        con = sqlite3.connect(db, timeout=10)
        try:
            rows = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        finally:
            con.close()
        if (sum(rows.values()) >= expected and not rows.get("running")) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--latency", type=float, default=0.05, help="the fake upstream's seconds per answer")
    p.add_argument("--warmup", type=int, default=200, help="requests before the memory baseline (default 200)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args()

    with fake_upstream(latency=args.latency) as (upstream_url, _), tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.db"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")}
        cmd = [sys.executable, "-m", "optigraph", "serve", "--base-url", upstream_url, "--db-url", f"sqlite:///{db}"]
        proc = subprocess.Popen([*cmd, "--port", str(port), "--log-level", "warning"], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", proc)
            asyncio.run(_warmup(url + "/v1", args.warmup))
            rss_before = rss_mib(proc.pid)
            result = asyncio.run(drive(url + "/v1", args.clients, args.duration, proc.pid))
            rss_after = rss_mib(proc.pid)
            sent = sum(len(v) for v in result["latencies"].values()) + len(result["errors"])
            runs = stored(db, sent + args.warmup)
        finally:
            stop(proc)

    all_latencies = [x for v in result["latencies"].values() for x in v]
    report = {
        "clients": args.clients,
        "duration_s": args.duration,
        "upstream_latency_s": args.latency,
        "requests": sent,
        "requests_per_s": round(sent / args.duration, 1),
        "errors": len(result["errors"]),
        "error_samples": result["errors"][:5],
        "latency_ms": {
            kind: {
                "count": len(v),
                "p50": round(percentile(v, 0.50) * 1000, 1),
                "p99": round(percentile(v, 0.99) * 1000, 1),
            }
            for kind, v in {"all": all_latencies, **result["latencies"]}.items()
        },
        "rss_mib": {
            "after_warmup": round(rss_before, 1),
            "during": result["rss_samples_mib"],
            "after": round(rss_after, 1),
            "growth": round(rss_after - rss_before, 1),
        },
        "runs_stored": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


async def _warmup(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            await one(session, url, KINDS[i % len(KINDS)], i)


if __name__ == "__main__":
    main()
