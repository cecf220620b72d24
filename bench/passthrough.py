"""Passthrough overhead: the fake upstream called directly vs through `optigraph serve` (approach `none`).

    python bench/passthrough.py               # full run (about two minutes)
    python bench/passthrough.py --quick       # short run
    python bench/passthrough.py --reference   # also a minimal forwarding proxy, as a yardstick

Starts, on loopback free ports, the fake upstream (bench/fake_upstream.py, no added latency) and
`optigraph serve` in front of it (SQLite in a temporary directory, recording on), then measures in
one run:

- latency: sequential non-streaming requests over one keep-alive connection per target, the
  targets interleaved in blocks so that machine noise hits them alike; median and p90, and the
  median optigraph adds;
- throughput: requests/s at 64 concurrent connections, the targets in alternating rounds, with
  `wrk` when it is installed (Debian/Ubuntu: `apt-get install wrk`) and an asyncio aiohttp load
  generator otherwise (slower, so it saturates sooner: prefer wrk);
- CPU time per request of the process serving each target (from /proc, Linux only);
- full garbage collections per 10,000 requests under load, for an optigraph served by one process (from
  its /metrics: a full collection walks the whole heap while every request in flight waits).

The load generator, optigraph and the upstream all share this machine's cores; the number is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import cpu_seconds, fake_upstream, optigraph_server, reference_proxy  # noqa: E402

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "What is six times seven?"}], "max_tokens": 16}
BODY_BYTES = json.dumps(BODY).encode()
TARGET_ADDED_MS = 2.0
TARGET_RATIO = 0.5
CONNECTIONS = 64


# ---- latency ----------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection (the stdlib client: little overhead of its own)."""

    def __init__(self, base_url: str) -> None:
        u = urlsplit(base_url)
        self.host, self.port, self.path = u.hostname, u.port, u.path.rstrip("/") + "/chat/completions"
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self) -> float:
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", self.path, body=BODY_BYTES, headers={"content-type": "application/json"})
            resp = self.conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            # the server closed the idle keep-alive connection (5 s) while other targets were measured
            self.conn.close()
            t0 = time.perf_counter()
            self.conn.request("POST", self.path, body=BODY_BYTES, headers={"content-type": "application/json"})
            resp = self.conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{self.host}:{self.port} answered {resp.status}: {data[:300]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def measure_latency(urls: dict[str, str], *, requests: int, block: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request for each target, `requests` each, in interleaved blocks of `block`."""
    clients = {name: Client(url) for name, url in urls.items()}
    try:
        for client in clients.values():
            for _ in range(warmup):
                client.post()
        out: dict[str, list[float]] = {name: [] for name in urls}
        names = list(urls)
        for i in range(max(1, requests // block)):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                client = clients[name]
                out[name].extend(client.post() for _ in range(block))
        return out
    finally:
        for client in clients.values():
            client.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# ---- throughput -------------------------------------------------------------------------------

WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
""" % BODY_BYTES.decode()


def wrk_round(url: str, seconds: float, script: str) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            script,
            url.rstrip("/") + "/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = errors = total = 0.0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif line.startswith("Non-2xx or 3xx responses:"):
            errors += float(line.split(":")[1])
        elif line.startswith("Socket errors:"):
            errors += sum(float(part.split()[1]) for part in line.split(":", 1)[1].split(","))
        elif "requests in" in line:
            total = float(line.split()[0])
    return {"rps": rps, "errors": errors, "requests": total}


async def _asyncio_round(url: str, seconds: float) -> dict[str, float]:
    # aiohttp rather than httpx: httpx's pool costs so much CPU at 64 connections that the load
    # generator, not the server, would set the pace.
    import aiohttp

    target = url.rstrip("/") + "/chat/completions"
    done = errors = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                async with session.post(target, data=BODY_BYTES, headers=headers) as r:
                    await r.read()
                    done += 1
                    errors += r.status != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - t0
    return {"rps": done / elapsed, "errors": float(errors), "requests": float(done)}


def asyncio_round(url: str, seconds: float) -> dict[str, float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_asyncio_round(url, seconds))
    return uvloop.run(_asyncio_round(url, seconds))


def full_collections(base_url: str) -> float | None:
    """The server's count of full (generation 2) garbage collections, from its /metrics; None where the
    target has no such series (the reference proxy, an older optigraph, several workers)."""
    root = base_url.rsplit("/v1", 1)[0]
    try:
        with urllib.request.urlopen(f"{root}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith('python_gc_collections_total{generation="2"}'):
            return float(line.split()[-1])
    return None


def measure_throughput(
    urls: dict[str, str], pids: dict[str, int], *, rounds: int, seconds: float, warmup_s: float, use_wrk: bool
) -> dict[str, dict[str, list[float]]]:
    """Per target: req/s and errors of each round, and CPU ms per request of the process serving it."""
    with tempfile.TemporaryDirectory(prefix="optigraph-bench-") as tmp:
        script = str(Path(tmp) / "post.lua")
        Path(script).write_text(WRK_SCRIPT)

        def one(url: str, secs: float) -> dict[str, float]:
            return wrk_round(url, secs, script) if use_wrk else asyncio_round(url, secs)

        for url in urls.values():
            one(url, warmup_s)
        results = {name: {"rps": [], "errors": [], "cpu_ms_per_req": [], "full_gc": []} for name in urls}
        names = list(urls)
        for i in range(rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                gc0 = full_collections(urls[name]) if name != "direct" else None
                cpu0 = cpu_seconds(pids[name])
                r = one(urls[name], seconds)
                cpu = cpu_seconds(pids[name]) - cpu0
                gc1 = full_collections(urls[name]) if gc0 is not None else None
                if gc0 is not None and gc1 is not None and r["requests"]:
                    results[name]["full_gc"].append(10_000 * (gc1 - gc0) / r["requests"])
                results[name]["rps"].append(r["rps"])
                results[name]["errors"].append(r["errors"])
                if r["requests"]:
                    results[name]["cpu_ms_per_req"].append(1000.0 * cpu / r["requests"])
        return results


# ---- report -----------------------------------------------------------------------------------

LABELS = {"direct": "direct", "optigraph": "optigraph", "reference": "reference", "base": "base"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (400 requests, 3 s load rounds)")
    p.add_argument("--requests", type=int, help="sequential requests per target (default 2000; quick 400)")
    p.add_argument("--seconds", type=float, help="seconds per load round (default 10; quick 3)")
    p.add_argument("--rounds", type=int, help="load rounds per target (default 3; quick 1)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also measure bench/reference_proxy.py, a minimal forwarding proxy on the same stack",
    )
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator even if wrk is installed")
    p.add_argument(
        "--base",
        type=Path,
        metavar="TREE",
        help="also measure optigraph from this source tree (e.g. `git worktree add /tmp/base main`), as `base`",
    )
    p.add_argument(
        "--workers",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also measure optigraph with `serve --workers N` (repeatable), as `optigraph xN`",
    )
    args = p.parse_args()
    requests = args.requests or (400 if args.quick else 2000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    generator = "wrk (1 thread)" if use_wrk else "asyncio aiohttp client, one process (wrk not found)"

    print(f"optigraph passthrough benchmark  {dt.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine: nproc={os.cpu_count()}  {platform.machine()}  Python {platform.python_version()}"
        f"  (load generator, proxies and upstream share these cores)"
    )
    print(f"load generator: {generator}")
    with contextlib.ExitStack() as stack:
        direct_url, up = stack.enter_context(fake_upstream(0.0))
        proxy_url, proxy = stack.enter_context(optigraph_server(direct_url))
        urls, pids = {"direct": direct_url, "optigraph": proxy_url}, {"direct": up.pid, "optigraph": proxy.pid}
        if args.base is not None:
            base_url, base = stack.enter_context(optigraph_server(direct_url, tree=args.base.resolve()))
            urls["base"], pids["base"] = base_url, base.pid
        if args.reference:
            ref_url, ref = stack.enter_context(reference_proxy(direct_url))
            urls["reference"], pids["reference"] = ref_url, ref.pid
        for count in args.workers:
            name = f"optigraph x{count}"
            LABELS[name] = f"x{count}"
            url, proc = stack.enter_context(optigraph_server(direct_url, workers=count))
            urls[name], pids[name] = url, proc.pid
        print(f"sequential latency: {requests} requests per target, blocks of 100, interleaved ...", flush=True)
        lat = measure_latency(urls, requests=requests, block=min(100, requests), warmup=50 if args.quick else 200)
        print(
            f"throughput: {CONNECTIONS} connections, {rounds} x {seconds:.0f} s per target, alternating ...", flush=True
        )
        tp = measure_throughput(
            urls, pids, rounds=rounds, seconds=seconds, warmup_s=2.0 if args.quick else 3.0, use_wrk=use_wrk
        )

    names = list(urls)
    med = {n: statistics.median(lat[n]) * 1000.0 for n in names}
    p90 = {n: pct(lat[n], 0.9) * 1000.0 for n in names}
    rps = {n: statistics.median(tp[n]["rps"]) for n in names}
    cpu = {n: statistics.median(tp[n]["cpu_ms_per_req"]) if tp[n]["cpu_ms_per_req"] else float("nan") for n in names}
    added = med["optigraph"] - med["direct"]
    ratio = rps["optigraph"] / rps["direct"] if rps["direct"] else float("nan")

    def row(label: str, values: dict[str, float], fmt: str, note: str = "") -> None:
        print(f"{label:30}" + "".join(format(values[n], fmt).rjust(12) for n in names) + f"  {note}")

    print()
    print(f"{'':30}" + "".join(LABELS[n].rjust(12) for n in names))
    print("-" * (30 + 12 * len(names) + 40))
    row(
        "latency median (ms)",
        med,
        ".3f",
        f"optigraph adds {added:+.3f} ms  (target <= +{TARGET_ADDED_MS:.0f}: {'met' if added <= TARGET_ADDED_MS else 'MISSED'})",
    )
    row("latency p90 (ms)", p90, ".3f", f"optigraph adds {p90['optigraph'] - p90['direct']:+.3f} ms")
    row(
        f"throughput, {CONNECTIONS} conn (req/s)",
        rps,
        ".0f",
        f"optigraph/direct {ratio:.2f}  (target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})",
    )
    row("  ratio to direct", {n: rps[n] / rps["direct"] for n in names}, ".2f")
    if "reference" in rps:
        row("  ratio to reference", {n: rps[n] / rps["reference"] for n in names}, ".2f")
    row("CPU per request (ms)", cpu, ".3f", "of the process serving that target, under load")
    full_gc = {n: statistics.median(tp[n]["full_gc"]) if tp[n]["full_gc"] else float("nan") for n in names}
    row("full GCs per 10k requests", full_gc, ".1f", "generation-2 collections under load (from /metrics)")
    print("-" * (30 + 12 * len(names) + 40))
    for n in names:
        print(f"rounds req/s {LABELS[n]:>10}: {', '.join(f'{x:.0f}' for x in tp[n]['rps'])}")
    errors = sum(sum(tp[n]["errors"]) for n in names)
    print(f"non-2xx or socket errors during load: {errors:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
