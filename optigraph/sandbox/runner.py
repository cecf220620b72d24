"""The server side of the sandbox: start the child, feed it the program, bound its time and output,
read its report, clean up.

Stdlib only (like the child), so it can be loaded on its own by a plain interpreter.
"""

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
SandboxLevel = Literal["strict", "reduced", "minimal"]

# The layers each level requires to be in force before a program runs (docs/sandbox.md says what
# each guarantees). The child checks them after confining itself and refuses to run the program
# when one is missing; nothing lowers a level but choosing another one.
LEVELS: dict[str, tuple[str, ...]] = {
    "strict": ("namespaces", "tmpfs", "rlimits", "no_new_privs", "landlock", "capabilities", "seccomp", "audit_hook"),
    "reduced": ("rlimits", "no_new_privs", "landlock", "capabilities", "seccomp", "audit_hook"),  # no namespaces
    "minimal": ("rlimits", "no_new_privs", "capabilities", "seccomp", "audit_hook"),  # no namespaces, no Landlock
}
DEFAULT_LEVEL: SandboxLevel = "strict"

CHILD = str(Path(__file__).with_name("child.py"))

# Modules a program may import itself (what those modules import is up to them).
DEFAULT_ALLOWED_MODULES: tuple[str, ...] = (
    "z3",
    "sympy",
    "mpmath",
    "math",
    "cmath",
    "fractions",
    "decimal",
    "numbers",
    "statistics",
    "random",
    "itertools",
    "functools",
    "operator",
    "collections",
    "heapq",
    "bisect",
    "array",
    "copy",
    "string",
    "re",
    "json",
    "typing",
    "dataclasses",
    "enum",
    "datetime",
    "time",
    "textwrap",
    "pprint",
    "numpy",
)
_MEMORY_SIGNS = ("MemoryError", "std::bad_alloc", "out of memory", "Cannot allocate memory")
# How a refusal by a kernel layer (Landlock, seccomp, the empty network namespace) ends a program
# that the audit hook did not stop first: the last line of its traceback.
_KERNEL_REFUSAL = re.compile(
    r"^(PermissionError|sandbox\.SandboxViolation)\b|Network is unreachable"
    r"|Temporary failure in name resolution|Name or service not known"
)


class SandboxUnavailable(Exception):
    """The sandbox could not put in force every layer its level requires, so the program was not run
    at all. `missing`: each required layer that is not in force -> why; `layers`: those that were."""

    def __init__(self, level: str, missing: dict[str, str], layers: dict[str, str] | None = None) -> None:
        self.level = level
        self.missing = dict(missing)
        self.layers = dict(layers or {})
        why = "; ".join(f"{name}: {reason}" for name, reason in self.missing.items())
        super().__init__(
            f"the program was not run: sandbox level {level!r} requires layers that are not in force ({why})"
        )


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
    level: SandboxLevel = DEFAULT_LEVEL,
    audit_guard: bool = True,
    withhold_layers: Iterable[str] = (),
) -> SandboxResult:
    """Runs untrusted Python in a confined child process and reports what happened; never raises
    for anything the program does.

    The program runs in a fresh temporary directory (its cwd, removed afterwards) with a clean
    environment, no network and no files outside that directory except the interpreter's own
    installation, read-only. `timeout_s` is wall-clock time for the whole run; the process group
    is killed when it passes. stdout and stderr are each kept up to `max_output` bytes.

    Fails closed: the program runs only when every layer `level` requires is in force; otherwise
    nothing of it runs and `SandboxUnavailable` is raised, naming the missing layers and why.

    For tests only (the server never passes them): `audit_guard=False` turns the audit hook off
    (and so stops requiring it), to show the kernel layers hold alone; `withhold_layers` makes the
    child skip those layers as if this kernel lacked them, to show the refusal."""
    if level not in LEVELS:
        raise ValueError(f"unknown sandbox level {level!r} (known: {', '.join(LEVELS)})")
    required = [layer for layer in LEVELS[level] if audit_guard or layer != "audit_hook"]
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
        "require": required,
        "withhold": sorted(set(withhold_layers)),
    }
    env = {
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MALLOC_ARENA_MAX": "2",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    proc: asyncio.subprocess.Process | None = None
    report_r = report_w = -1
    try:
        report_r, report_w = os.pipe()
        config["report_fd"] = report_w
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable,
            "-I",
            "-B",
            CHILD,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            pass_fds=(report_w,),
        )
        os.close(report_w)
        report_w = -1
        return await _supervise(
            proc,
            code,
            report_r,
            timeout_s=timeout_s,
            max_output=max_output,
            started=started,
            level=level,
            required=required,
        )
    except OSError as exc:  # the sandbox itself failed (no pipe, no interpreter): not the program
        return SandboxResult(
            ok=False,
            stdout="",
            stderr=f"sandbox failure: {exc}",
            error_kind="error",
            exit_code=None,
            seconds=time.perf_counter() - started,
        )
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)  # cancelled while running: nothing may outlive the request
        for fd in (report_r, report_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


async def _supervise(
    proc: asyncio.subprocess.Process,
    code: str,
    report_fd: int,
    *,
    timeout_s: float,
    max_output: int,
    started: float,
    level: str,
    required: list[str],
) -> SandboxResult:
    assert proc.stdin and proc.stdout and proc.stderr
    report = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(report), os.fdopen(os.dup(report_fd), "rb", buffering=0)
    )
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
    report = records.records()
    _check_layers(report, level=level, required=required)
    return _result(
        proc.returncode,
        out.text(),
        err.text(),
        report,
        seconds=seconds,
        timed_out=timed_out,
        truncated=out.cut or err.cut,
        timeout_s=timeout_s,
    )


def _check_layers(report: list[dict], *, level: str, required: list[str]) -> None:
    """Raises `SandboxUnavailable` when the child's first record says a required layer was missing
    (the child then refused to run the program). A record claiming all layers while another was
    required cannot come from the child, which checks the same list; it is refused all the same."""
    head = report[0] if report and "layers" in report[0] else None
    if head is None:
        return  # the child stopped before confining itself: no program ran; reported as an error
    layers = dict(head.get("layers") or {})
    unavailable = dict(head.get("unavailable") or {})
    missing = {name: str(unavailable.get(name, "not in force")) for name in required if name not in layers}
    if missing:
        raise SandboxUnavailable(level, missing, layers)


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
            self.data += chunk[: max(room, 0)]

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


def _result(
    code: int | None,
    out: str,
    err: str,
    report: list[dict],
    *,
    seconds: float,
    timed_out: bool,
    truncated: bool,
    timeout_s: float,
) -> SandboxResult:
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
    return SandboxResult(
        ok=kind is None,
        stdout=out,
        stderr=err,
        error_kind=kind,
        exit_code=code,
        seconds=seconds,
        layers=dict(head.get("layers") or {}),
        unavailable=dict(head.get("unavailable") or {}),
        violations=violations,
        truncated=truncated,
    )
