"""The server side of the sandbox: start the child, feed it the program, bound its time and output,
read its report, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ErrorKind = Literal["timeout", "memory", "forbidden", "error"]

CHILD = str(Path(__file__).with_name("child.py"))

# Modules a program may import itself (what those modules import is up to them).
DEFAULT_ALLOWED_MODULES: tuple[str, ...] = (
    "z3", "sympy", "mpmath", "math", "cmath", "fractions", "decimal", "numbers", "statistics", "random",
    "itertools", "functools", "operator", "collections", "heapq", "bisect", "array", "copy", "string", "re",
    "json", "typing", "dataclasses", "enum", "datetime", "time", "textwrap", "pprint", "numpy",
)
_MEMORY_SIGNS = ("MemoryError", "std::bad_alloc", "out of memory", "Cannot allocate memory")
# How a refusal by a kernel layer (Landlock, seccomp, the empty network namespace) ends a program
# that the audit hook did not stop first: the last line of its traceback.
_KERNEL_REFUSAL = re.compile(r"^(PermissionError|sandbox\.SandboxViolation)\b|Network is unreachable"
                             r"|Temporary failure in name resolution|Name or service not known")


@dataclass(frozen=True)
class SandboxResult:
    """How a program ran. `ok`: it exited 0 and nothing it tried was refused."""

    ok: bool
    stdout: str
    stderr: str
    error_kind: ErrorKind | None
    exit_code: int | None  # negative: killed by that signal
    seconds: float
    layers: dict[str, str] = field(default_factory=dict)  # active layer -> what it enforces
    unavailable: dict[str, str] = field(default_factory=dict)  # layer -> why it is not active
    violations: tuple[str, ...] = ()  # what the program tried and was refused
    truncated: bool = False  # stdout or stderr was cut at the output cap


async def run_python(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 512,
    allow_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES,
    max_output: int = 64 * 1024,
    disk_mb: int = 64,
    max_processes: int = 32,
    max_open_files: int = 64,
    python: str | None = None,
    audit_guard: bool = True,
    kernel: bool = True,
) -> SandboxResult:
    """Runs untrusted Python in a confined child process and reports what happened; never raises
    for anything the program does.

    The program runs in a fresh temporary directory (its cwd, removed afterwards) with a clean
    environment, no network and no files outside that directory except the interpreter's own
    installation, read-only. `timeout_s` is wall-clock time for the whole run; the process group
    is killed when it passes. stdout and stderr are each kept up to `max_output` bytes.
    `audit_guard` and `kernel` turn one layer family off, so tests can show each holds alone; the
    server never turns them off."""
    workdir = tempfile.mkdtemp(prefix="optigraph-sandbox-")
    config = {
        "workdir": workdir,
        "memory_mb": memory_mb,
        "cpu_s": math.ceil(timeout_s) + 1,
        "disk_mb": disk_mb,
        "nproc": max_processes,
        "nofile": max_open_files,
        "allow_modules": sorted(set(allow_modules)),
        "audit_guard": audit_guard,
        "kernel": kernel,
    }
    env = {"HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc: asyncio.subprocess.Process | None = None
    report_r = report_w = -1
    try:
        report_r, report_w = os.pipe()
        config["report_fd"] = report_w
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable, "-I", "-B", CHILD, json.dumps(config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=workdir, env=env, start_new_session=True, pass_fds=(report_w,),
        )
        os.close(report_w)
        report_w = -1
        return await _supervise(proc, code, report_r, timeout_s=timeout_s, max_output=max_output, started=started)
    except OSError as exc:  # the sandbox itself failed (no pipe, no interpreter): not the program
        return SandboxResult(ok=False, stdout="", stderr=f"sandbox failure: {exc}",
                             error_kind="error", exit_code=None, seconds=time.perf_counter() - started)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)  # cancelled while running: nothing may outlive the request
        for fd in (report_r, report_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


async def _supervise(proc: asyncio.subprocess.Process, code: str, report_fd: int, *, timeout_s: float,
                     max_output: int, started: float) -> SandboxResult:
    assert proc.stdin and proc.stdout and proc.stderr
    report = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(report),
                                                os.fdopen(os.dup(report_fd), "rb", buffering=0))
    out, err, records = _Capture(max_output), _Capture(max_output), _Capture(256 * 1024)
    readers = [asyncio.create_task(c.drain(s)) for c, s in ((out, proc.stdout), (err, proc.stderr), (records, report))]
    timed_out = False
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(code.encode("utf-8", errors="replace"))
            await proc.stdin.drain()
        proc.stdin.close()
        remaining = max(0.0, timeout_s - (time.perf_counter() - started))
        try:
            await asyncio.wait_for(proc.wait(), remaining)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            await proc.wait()
        seconds = time.perf_counter() - started
        # The pipes close when the process dies; a descendant holding them (only possible where
        # the seccomp layer is missing) must not hold the request: keep what arrived.
        await asyncio.wait(readers, timeout=5)
    finally:
        for task in readers:
            task.cancel()
        transport.close()
    return _result(proc.returncode, out.text(), err.text(), records.records(), seconds=seconds,
                   timed_out=timed_out, truncated=out.cut or err.cut, timeout_s=timeout_s)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid


class _Capture:
    """What a pipe delivered, up to `cap` bytes; the rest is read and dropped, so the program never
    blocks on a full pipe."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.cut = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.cut = True
            self.data += chunk[:max(room, 0)]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + f"\n[output cut at {self.cap} bytes]" if self.cut else text

    def records(self) -> list[dict]:
        """The JSON objects, one a line, of the report channel."""
        found = []
        for line in bytes(self.data).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found


def _result(code: int | None, out: str, err: str, report: list[dict], *, seconds: float, timed_out: bool,
            truncated: bool, timeout_s: float) -> SandboxResult:
    # Only the first record is the child's own statement of its layers (written before the program
    # ran); anything after it may have been written by the program.
    head = report[0] if report and "layers" in report[0] else {}
    rest = report[1:] if head else report
    violations = tuple(str(r["violation"]) for r in rest if "violation" in r)
    last_line = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    if code != 0 and not violations and _KERNEL_REFUSAL.search(last_line):
        violations = (f"refused by the kernel: {last_line.strip()}"[:300],)
    if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
        kind: ErrorKind | None = "timeout"
        err = (err + "\n" if err else "") + f"sandbox: stopped after {timeout_s:g} s"
    elif any(r.get("memory") for r in rest) or (code != 0 and any(s in err for s in _MEMORY_SIGNS)):
        kind = "memory"
    elif violations:
        kind = "forbidden"
    elif code != 0:
        kind = "error"
    else:
        kind = None
    return SandboxResult(ok=kind is None, stdout=out, stderr=err, error_kind=kind, exit_code=code,
                         seconds=seconds, layers=dict(head.get("layers") or {}),
                         unavailable=dict(head.get("unavailable") or {}), violations=violations,
                         truncated=truncated)
