"""Instructions per passthrough request, counted by valgrind's callgrind: a figure that machine noise
does not move (CPU time per request wanders by 10-20 % on a shared machine; this by about 1 %).

    python bench/instructions.py                    # optigraph (this tree)
    python bench/instructions.py --reference        # and the minimal forwarding proxy
    python bench/instructions.py --base ../older    # and an older checkout, to compare a change

Starts the fake upstream (bench/fake_upstream.py) and each target under callgrind with counting off,
warms it up, switches counting on (`callgrind_control -i on`), sends --requests non-streaming
requests over 8 connections, dumps the counters and divides: user-space instructions of the whole
process (every thread) per request. Kernel work (the socket system calls) is not counted; it is about
the same for every target, so ratios of these figures understate the difference in CPU time a
little. Needs valgrind (`apt-get install valgrind`); a target runs about 50 times slower under it,
so keep --requests in the hundreds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import fake_upstream, optigraph_server, reference_proxy  # noqa: E402

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "What is six times seven?"}], "max_tokens": 16}
CONNECTIONS = 8
START_TIMEOUT_S = 600.0  # an interpreter importing the server under valgrind starts slowly


async def send(base_url: str, n: int) -> None:
    import aiohttp

    data = json.dumps(BODY).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        gate = asyncio.Semaphore(CONNECTIONS)

        async def one() -> None:
            async with gate:
                headers = {"content-type": "application/json"}
                async with session.post(f"{base_url}/chat/completions", data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{base_url}: HTTP {resp.status}")

        await asyncio.gather(*(one() for _ in range(n)))


def callgrind(out: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    wrap = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", "--log-file=/dev/null")
    return wrap, {"PYTHONMALLOC": "malloc"}  # valgrind counts through the system allocator


def counted(proc: subprocess.Popen, out: Path, base_url: str, requests: int, warmup: int) -> float:
    """Instructions per request of `proc` over `requests` requests, after `warmup` uncounted ones."""
    asyncio.run(send(base_url, warmup))
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
    asyncio.run(send(base_url, requests))
    time.sleep(1.0)  # the last records written (the recorder lingers a few milliseconds)
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    dump = Path(f"{out}.1")
    for _ in range(100):
        if dump.exists() and "totals:" in (text := dump.read_text(errors="replace")):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"callgrind wrote no dump at {dump}")
    totals = next(line for line in text.splitlines() if line.startswith(("summary:", "totals:")))
    return int(totals.split()[1]) / requests


@contextlib.contextmanager
def target(kind: str, upstream: str, out: Path, tree: Path | None) -> Iterator[tuple[str, subprocess.Popen]]:
    wrap, env = callgrind(out)
    if kind == "reference":
        with reference_proxy(upstream, wrap=wrap, env_extra=env, start_timeout_s=START_TIMEOUT_S) as served:
            yield served
    else:
        with optigraph_server(upstream, tree=tree, wrap=wrap, env_extra=env, start_timeout_s=START_TIMEOUT_S) as served:
            yield served


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400, help="counted requests per target (default 400)")
    p.add_argument("--warmup", type=int, default=200, help="uncounted requests first (default 200)")
    p.add_argument("--reference", action="store_true", help="also count the minimal forwarding proxy")
    p.add_argument("--base", type=Path, default=None, help="also count optigraph from this source tree")
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install valgrind", file=sys.stderr)
            return 2
    targets: list[tuple[str, str, Path | None]] = [("optigraph", "optigraph", None)]
    if args.base is not None:
        targets.append((f"optigraph ({args.base})", "optigraph", args.base.resolve()))
    if args.reference:
        targets.append(("reference", "reference", None))
    print(f"instructions per passthrough request, {args.requests} counted after {args.warmup} warm-up requests")
    figures: dict[str, float] = {}
    with fake_upstream(0.0) as (upstream, _), tempfile.TemporaryDirectory(prefix="optigraph-cg-") as tmp:
        for i, (name, kind, tree) in enumerate(targets):
            out = Path(tmp) / f"cg-{i}.out"
            with target(kind, upstream, out, tree) as (base_url, proc):
                figures[name] = counted(proc, out, base_url, args.requests, args.warmup)
            print(f"  {name:<40} {figures[name] / 1000:8.0f} k", flush=True)
    first = figures["optigraph"]
    for name, value in figures.items():
        if name != "optigraph":
            print(f"  optigraph / {name}: {first / value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
