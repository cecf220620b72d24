"""Starting and stopping the processes a benchmark measures (all on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def fake_upstream(latency: float = 0.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (base URL ending in /v1, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port), "--latency", str(latency)]
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        stop(proc)


@contextlib.contextmanager
def optigraph_server(
    base_url: str,
    *extra: str,
    tree: Path | None = None,
    workers: int = 1,
    wrap: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
    start_timeout_s: float = 60.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs `optigraph serve` in front of `base_url` with a throwaway SQLite file; the code of the
    source tree `tree` when given (e.g. an older checkout, to compare), else the installed one.
    `wrap` goes before the command (e.g. valgrind and its options), `env_extra` into its environment.

    Yields (base URL ending in /v1, process) once every worker answers."""
    port = free_port()
    env = {**os.environ, **(env_extra or {})}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if workers > 1:
        extra = (*extra, "--workers", str(workers))
    with tempfile.TemporaryDirectory(prefix="optigraph-bench-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        proc = subprocess.Popen(
            [
                *wrap,
                sys.executable,
                "-m",
                "optigraph",
                "serve",
                "--base-url",
                base_url,
                "--db-url",
                db_url,
                "--port",
                str(port),
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            cwd=tree,  # `python -m` puts the working directory first on the path
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, start_timeout_s)
            if workers > 1:
                wait_workers(f"http://127.0.0.1:{port}/health", workers)
            yield f"http://127.0.0.1:{port}/v1", proc
        finally:
            stop(proc)


def wait_workers(url: str, workers: int, tries: int = 2000) -> None:
    """Until /health has been answered by `workers` distinct processes (each request a new connection)."""
    import json

    seen: set[int] = set()
    for _ in range(tries):
        with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError, ValueError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                seen.add(json.loads(resp.read())["pid"])
        if len(seen) >= workers:
            return
        time.sleep(0.02)
    raise RuntimeError(f"only {len(seen)} of {workers} workers answered {url}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its child processes (Linux /proc), or NaN where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return float("nan")
    return own + sum(cpu_seconds(int(child)) for child in children)


@contextlib.contextmanager
def reference_proxy(
    base_url: str,
    *,
    wrap: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
    start_timeout_s: float = 60.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs bench/reference_proxy.py in front of `base_url` (`wrap` and `env_extra` as for
    `optigraph_server`). Yields (base URL ending in /v1, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [*wrap, sys.executable, str(BENCH / "reference_proxy.py"), "--port", str(port), "--upstream", base_url],
        env={**os.environ, **(env_extra or {})},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, start_timeout_s)
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        stop(proc)
