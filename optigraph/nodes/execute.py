"""execute: run model-written Python in the sandbox and record how it went; never raises for a
program that fails (a failure is an outcome to record and, usually, to show the model).

When the sandbox cannot put in force every layer the run's sandbox level requires, the program is
not run at all: the record's outcome is "unavailable" and its note names the missing layers. That is
no fault of the program, so an approach should not ask the model to fix it; it answers without
execution instead (its documented fallback).

`ExecutionState` adds the typed record list to the shared state; approaches that run code extend it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypedDict

from optigraph.core.answers import (  # noqa: F401  (code_blocks, extract_code, without_code: re-exported)
    code_blocks,
    extract_code,
    extract_normalized,
    without_code,
)
from optigraph.core.state import ApproachState
from optigraph.sandbox import (
    DEFAULT_ALLOWED_MODULES,
    SandboxLevel,
    SandboxResult,
    SandboxUnavailable,
    run_python,
)

# "unavailable": the program was not run, the sandbox lacked a layer its level requires
Outcome = Literal["timeout", "memory", "forbidden", "error", "no_output", "unavailable"]

MAX_RECORDED = 16_000  # characters of stdout / stderr kept in the (checkpointed) state
RESULT_LINE_CHARS = 80  # a printed last line longer than this is not read as the program's answer


class Execution(TypedDict, total=False):
    """One run of one program."""

    attempt: int  # 1 for the first run, counting up through fixes
    code: str
    ok: bool  # exited 0, refused nothing and (when required) printed something
    error_kind: Outcome | None
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: list[str]  # the sandbox layers that were in force
    violations: list[str]  # what the program tried and was refused
    missing_layers: dict[str, str]  # "unavailable": each required layer not in force -> why


class ExecutionState(ApproachState, total=False):
    executions: Annotated[list[Execution], operator.add]


async def execute(
    code: str,
    *,
    node: str,
    attempt: int,
    level: SandboxLevel,
    timeout_s: float = 10,
    memory_mb: int = 512,
    allow_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES,
    require_output: bool = True,
) -> dict[str, Any]:
    """Runs `code` in the sandbox at `level` (the run context's `sandbox_level`); returns the state
    update (`executions`, `notes`). With `require_output`, a program that succeeds but prints
    nothing counts as failed ("no_output"). A sandbox that lacks a required layer runs nothing:
    the outcome is "unavailable" (see `unavailable`)."""
    try:
        result = await run_python(
            code, level=level, timeout_s=timeout_s, memory_mb=memory_mb, allow_modules=allow_modules
        )
    except SandboxUnavailable as refusal:
        return _not_run(code, node=node, attempt=attempt, refusal=refusal)
    except Exception as exc:  # the sandbox itself could not run (no temp dir, no pipes): an outcome too
        result = SandboxResult(
            ok=False,
            stdout="",
            stderr=f"sandbox failure: {type(exc).__name__}: {exc}",
            error_kind="error",
            exit_code=None,
            seconds=0.0,
        )
    kind: Outcome | None = result.error_kind
    if kind is None and require_output and not result.stdout.strip():
        kind = "no_output"
    record: Execution = {
        "attempt": attempt,
        "code": code,
        "ok": kind is None,
        "error_kind": kind,
        "exit_code": result.exit_code,
        "stdout": result.stdout[-MAX_RECORDED:],
        "stderr": result.stderr[-MAX_RECORDED:],
        "seconds": round(result.seconds, 3),
        "layers": sorted(result.layers),
        "violations": list(result.violations),
    }
    if kind is None:
        note = f"{node}: run {attempt} succeeded in {record['seconds']:.2f} s"
    else:
        note = f"{node}: run {attempt} failed ({kind}) after {record['seconds']:.2f} s: {_last_line(record)}"
    return {"executions": [record], "notes": [note]}


def _not_run(code: str, *, node: str, attempt: int, refusal: SandboxUnavailable) -> dict[str, Any]:
    missing = "; ".join(f"{name} ({why})" for name, why in refusal.missing.items())
    record: Execution = {
        "attempt": attempt,
        "code": code,
        "ok": False,
        "error_kind": "unavailable",
        "exit_code": None,
        "stdout": "",
        "stderr": "",
        "seconds": 0.0,
        "layers": sorted(refusal.layers),
        "violations": [],
        "missing_layers": dict(refusal.missing),
    }
    note = (
        f"{node}: run {attempt} not started: sandbox level {refusal.level!r} requires layers that are not "
        f"in force: {missing}; the program was not run"
    )
    return {"executions": [record], "notes": [note]}


def unavailable(record: Execution | None) -> bool:
    """Whether this run was refused by the sandbox (a layer missing), so no program can run here."""
    return bool(record) and record.get("error_kind") == "unavailable"


def _last_line(record: Execution) -> str:
    if record.get("error_kind") == "no_output":
        return "the program printed nothing"
    lines = [line for line in (record.get("stderr") or "").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else f"exit status {record.get('exit_code')}"


def failure_report(record: Execution, *, limit: int = 3000) -> str:
    """What went wrong with a run, written for the model that will fix the program."""
    kind = record.get("error_kind")
    stderr = (record.get("stderr") or "").strip()[-limit:]
    stdout = (record.get("stdout") or "").strip()[-limit // 3 :]
    if kind == "timeout":
        text = (
            "It was stopped at the time limit. Make it finish quickly: let the solver search "
            "instead of enumerating, and bound any loop."
        )
    elif kind == "memory":
        text = "It ran out of memory. Use a smaller formulation; do not build huge lists or ranges."
    elif kind == "forbidden":
        refused = "; ".join(record.get("violations") or ()) or "an operation the sandbox forbids"
        text = (
            f"It tried something the sandbox forbids ({refused}). Use only the allowed modules; "
            "no files, network or processes."
        )
    elif kind == "no_output":
        text = "It ran without error but printed nothing. It must print its result."
    elif kind == "unavailable":
        text = "It was not run: the sandbox cannot run programs here (a required protection is missing)."
    else:
        text = f"It exited with status {record.get('exit_code')}."
    if stderr and kind != "no_output":
        text += f"\n\nError output:\n```\n{stderr}\n```"
    if stdout:
        text += f"\n\nOutput before it stopped:\n```\n{stdout}\n```"
    return text


def printed_line(stdout: str) -> str | None:
    """The last non-empty line a program printed, when it is short enough to be its result."""
    lines = [line.strip() for line in (stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines and len(lines[-1]) <= RESULT_LINE_CHARS else None


def printed_answer(stdout: str) -> str | None:
    """The answer a program printed: the extractable answer (a number, a choice...) on its last
    printed line, normalised as votes compare answers; None when there is none."""
    line = printed_line(stdout)
    return extract_normalized(line) if line is not None else None
