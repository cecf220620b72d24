"""Runs and approaches described for people and tools: what the API, the command line and the web
page show. Everything returned is plain JSON-safe data; long strings are cut to `max_chars`.

The API's response models for these documents are in `api/schemas.py`.

A run's steps come from its LangGraph checkpoints. Each checkpoint is the state at the start of a
step, with the tasks that step ran and what they wrote; a step here is one such checkpoint followed
by the next one (the state its tasks produced). Step 0 is the `__start__` task writing the input.
A task that ran a child graph (a stage or branch of a composite expression) carries that graph's
own steps, read from its checkpoint namespace.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from langgraph.types import Send, StateSnapshot
from pydantic import BaseModel, ValidationError

from optigraph.core.cost import evaluate
from optigraph.core.spec import PluginSpec, Spec
from optigraph.engine.compiler import CompiledExpression, Compiler
from optigraph.engine.expression import (
    Approach,
    Node,
    Pipeline,
    check_size,
    check_text,
    choice_count,
    parse,
    to_text,
    validate,
)
from optigraph.engine.registry import Registry
from optigraph.errors import ExpressionError, InvalidRequest, OptigraphError
from optigraph.memory.checkpoints import open_checkpointer
from optigraph.memory.db import open_database
from optigraph.memory.queries import get_run, page_runs

MAX_CHARS = 4096  # default cut for long strings in step values and call messages
MAX_DEPTH = 32  # nesting kept in a value before it is shown as a string
TASKS_CHANNEL = "__pregel_tasks"  # where LangGraph keeps a step's Send packets
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


# ---- values --------------------------------------------------------------------------------------


def jsonable(value: Any, *, max_chars: int | None = MAX_CHARS, _depth: int = 0) -> Any:
    """`value` as JSON-safe data, strings longer than `max_chars` cut (None or 0: no cut)."""

    def inner(v: Any) -> Any:
        return jsonable(v, max_chars=max_chars, _depth=_depth + 1)

    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _cut(value, max_chars)
    if _depth >= MAX_DEPTH:
        return _cut(repr(value), max_chars)
    if isinstance(value, Mapping):
        return {str(k): inner(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [inner(v) for v in value]
    if isinstance(value, Send):
        return {"node": value.node, "arg": inner(value.arg)}
    if isinstance(value, BaseModel):
        return inner(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return inner(dataclasses.asdict(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, BaseException):
        return _cut(f"{type(value).__name__}: {value}", max_chars)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return _cut(str(value), max_chars)


def _cut(text: str, max_chars: int | None) -> str:
    if not max_chars or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}... [{len(text) - max_chars} more characters]"


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


# ---- runs ----------------------------------------------------------------------------------------


def run_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run (a `runs` row) without its request and response."""
    return {
        "object": "run",
        "id": row["id"],
        "parent_id": row.get("parent_id"),
        "expression": row["expression"],
        "model": row["model"],
        "status": row["status"],
        "checkpointed": bool(row.get("checkpointed")),
        "user": row.get("user"),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
        "latency_ms": row.get("latency_ms"),
        "usage": {**{k: int(row.get(k) or 0) for k in USAGE_KEYS}, "calls": int(row.get("calls") or 0)},
        "error": row.get("error"),
    }


def run_list(runs: list[Mapping[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [run_summary(r) for r in runs],
        "has_more": has_more,
        "next_cursor": runs[-1]["id"] if has_more and runs else None,
    }


def thread_ids(row: Mapping[str, Any]) -> list[str]:
    """The checkpointer threads of a run: its id, or `<id>.<i>` for each of n > 1 choices.
    A run that was not checkpointed (a lone passthrough) has none."""
    if not row.get("checkpointed"):
        return []
    try:
        n = int((row.get("request") or {}).get("n") or 1)
    except (TypeError, ValueError):
        n = 1
    return [row["id"]] if n <= 1 else [f"{row['id']}.{i}" for i in range(n)]


def parse_expression(text: str, compiler: Compiler) -> Node:
    """Parses and validates an expression within the compiler's limits (ExpressionError,
    UnknownApproach or ExpressionTooLarge if bad)."""
    check_text(text, compiler.limits)
    ast = parse(text)
    validate(ast, compiler.registry.names())
    check_size(ast, compiler.limits)
    return ast


def compile_expression(text: str, compiler: Compiler) -> CompiledExpression:
    """Parses, validates and compiles an expression (ExpressionError / UnknownApproach if bad)."""
    return compiler.compile(parse_expression(text, compiler))


async def run_detail(
    row: Mapping[str, Any], compiler: Compiler, *, max_chars: int | None = MAX_CHARS
) -> dict[str, Any]:
    """A run (a `get_run` row, calls included) with its graph, steps, upstream calls and totals."""
    detail: dict[str, Any] = {
        **run_summary(row),
        "request": jsonable(row.get("request"), max_chars=max_chars),
        "response": jsonable(row.get("response"), max_chars=max_chars),
    }
    compiled: CompiledExpression | None = None
    try:
        compiled = await compiler.compile_async(parse_expression(row["expression"], compiler))
        detail["graph"] = {"mermaid": compiled.mermaid(), "choices": compiled.choices, "error": None}
    except OptigraphError as exc:  # e.g. an approach this server does not have
        detail["graph"] = {"mermaid": None, "choices": None, "error": exc.message}
    threads: list[dict[str, Any]] = []
    for thread_id in thread_ids(row):
        if compiled is None:
            threads.append(
                {
                    "thread_id": thread_id,
                    "checkpoint_id": None,
                    "next": [],
                    "steps": [],
                    "error": "the expression does not compile here, so its steps cannot be read",
                }
            )
        else:
            threads.append(await read_thread(compiled, thread_id, max_chars=max_chars))
    calls = [upstream_call(c, max_chars=max_chars) for c in row.get("upstream_calls") or ()]
    detail["threads"] = threads
    detail["upstream_calls"] = calls
    detail["totals"] = totals(calls, threads)
    return detail


async def read_thread(
    compiled: CompiledExpression, thread_id: str, *, max_chars: int | None = MAX_CHARS
) -> dict[str, Any]:
    """One thread's steps, oldest first, child graphs' steps nested in the tasks that ran them."""
    config = {"configurable": {"thread_id": thread_id}}
    snapshots = await _history(compiled, config)
    head = snapshots[-1] if snapshots else None
    return {
        "thread_id": thread_id,
        "checkpoint_id": head.config["configurable"]["checkpoint_id"] if head else None,
        "next": list(head.next) if head else [],
        "steps": await _steps(compiled, snapshots, max_chars=max_chars),
        "decisions": list((head.values or {}).get("decisions") or []) if head else [],
        "error": None,
    }


async def _history(compiled: CompiledExpression, config: dict[str, Any]) -> list[StateSnapshot]:
    """The chain of checkpoints that leads to the newest one, oldest first."""
    snapshots = [s async for s in compiled.graph.aget_state_history(config)]  # newest first
    if not snapshots:
        return []
    by_id = {s.config["configurable"]["checkpoint_id"]: s for s in snapshots}
    chain, current = [], snapshots[0]
    while current is not None:
        chain.append(current)
        parent = (current.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        current = by_id.get(parent) if parent else None
    return chain[::-1]


async def _steps(
    compiled: CompiledExpression, snapshots: list[StateSnapshot], *, max_chars: int | None
) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for k, before in enumerate(snapshots):
        if not before.tasks:
            continue  # the final checkpoint: nothing ran from it
        after = snapshots[k + 1] if k + 1 < len(snapshots) else None
        sends = await _sends(compiled, before) if any(_is_push(t.path) for t in before.tasks) else []
        tasks = [
            await _task(compiled, before, t, sends, done=after is not None, max_chars=max_chars) for t in before.tasks
        ]
        meta = before.metadata or {}
        steps.append(
            {
                "step": int(meta.get("step", -1)) + 1,
                "checkpoint_ns": before.config["configurable"].get("checkpoint_ns", ""),
                "checkpoint_id": after.config["configurable"]["checkpoint_id"] if after else None,
                "parent_checkpoint_id": before.config["configurable"]["checkpoint_id"],
                "started_at": before.created_at,
                "finished_at": after.created_at if after else None,
                "status": "done" if after is not None else "incomplete",
                "tasks": tasks,
                "changes": _changes(before.values, after.values, max_chars=max_chars) if after else None,
            }
        )
    return steps


async def _task(
    compiled: CompiledExpression,
    snapshot: StateSnapshot,
    task: Any,
    sends: list[Any],
    *,
    done: bool,
    max_chars: int | None,
) -> dict[str, Any]:
    status = "error" if task.error is not None else ("done" if done or task.result is not None else "pending")
    out: dict[str, Any] = {
        "id": task.id,
        "name": task.name,
        "kind": "push" if _is_push(task.path) else "pull",
        "status": status,
        "input": None,
        "writes": jsonable(task.result, max_chars=max_chars) if task.result is not None else None,
        "error": jsonable(task.error, max_chars=max_chars) if task.error is not None else None,
        "checkpoint_ns": None,
        "steps": [],
    }
    if _is_push(task.path) and isinstance(task.path[1], int) and task.path[1] < len(sends):
        send = sends[task.path[1]]
        out["input"] = jsonable(getattr(send, "arg", send), max_chars=max_chars)
    child = task.state.get("configurable", {}) if isinstance(task.state, Mapping) else {}
    if child.get("checkpoint_ns"):
        out["checkpoint_ns"] = child["checkpoint_ns"]
        history = await _history(
            compiled,
            {
                "configurable": {
                    "thread_id": child.get("thread_id") or snapshot.config["configurable"]["thread_id"],
                    "checkpoint_ns": child["checkpoint_ns"],
                }
            },
        )
        out["steps"] = await _steps(compiled, history, max_chars=max_chars)
    return out


def _is_push(path: tuple[Any, ...]) -> bool:
    return bool(path) and path[0] == "__pregel_push"


async def _sends(compiled: CompiledExpression, snapshot: StateSnapshot) -> list[Any]:
    """The Send packets a step's push tasks were started with, in task-path order."""
    saver = compiled.graph.checkpointer
    if saver is None or not hasattr(saver, "aget_tuple"):
        return []
    saved = await saver.aget_tuple(snapshot.config)
    if saved is None:
        return []
    return list(saved.checkpoint.get("channel_values", {}).get(TASKS_CHANNEL) or [])


def _changes(before: Any, after: Any, *, max_chars: int | None) -> dict[str, Any]:
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return {"value": jsonable(after, max_chars=max_chars)}
    changed = {k: jsonable(v, max_chars=max_chars) for k, v in after.items() if k not in before or before[k] != v}
    for k in before:
        if k not in after:
            changed[k] = None
    return changed


def upstream_call(row: Mapping[str, Any], *, max_chars: int | None = MAX_CHARS) -> dict[str, Any]:
    """A stored upstream call: the messages sent, the other parameters, what came back."""
    request = dict(row.get("request") or {})
    messages = request.pop("messages", [])
    request.pop("model", None)
    prompt, completion = int(row.get("prompt_tokens") or 0), int(row.get("completion_tokens") or 0)
    return {
        "id": row.get("id"),
        "node": row["node"],
        "backend": row["backend"],
        "model": row["model"],
        "attempt": int(row.get("attempt") or 1),
        "status": row["status"],
        "error": row.get("error"),
        "started_at": _iso(row.get("started_at")),
        "latency_ms": float(row.get("latency_ms") or 0.0),
        "messages": jsonable(messages, max_chars=max_chars),
        "parameters": jsonable(request, max_chars=max_chars),
        "choices": jsonable((row.get("response") or {}).get("choices") or [], max_chars=max_chars),
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "reasoning_tokens": int(row.get("reasoning_tokens") or 0),
            "total_tokens": prompt + completion,
            "calls": 1,
        },
    }


def iter_steps(steps: list[dict[str, Any]], depth: int = 0):
    """(depth, step, task) for every task, child graphs' tasks right after the task that ran them."""
    for step in steps:
        for task in step.get("tasks") or ():
            yield depth, step, task
            yield from iter_steps(task.get("steps") or [], depth + 1)


def totals(calls: list[dict[str, Any]], threads: list[dict[str, Any]]) -> dict[str, Any]:
    by_node: dict[str, dict[str, Any]] = {}
    for c in calls:
        node = by_node.setdefault(c["node"], {"calls": 0, "total_tokens": 0, "latency_ms": 0.0})
        node["calls"] += 1
        node["total_tokens"] += c["usage"]["total_tokens"]
        node["latency_ms"] += c["latency_ms"]
    return {
        "calls": len(calls),
        "failed_calls": sum(c["status"] != "ok" for c in calls),
        "retried_calls": sum(c["attempt"] > 1 for c in calls),
        **{k: sum(c["usage"][k] for c in calls) for k in USAGE_KEYS},
        "upstream_latency_ms": sum(c["latency_ms"] for c in calls),
        "steps": sum(len(t["steps"]) for t in threads),
        "tasks": sum(1 for t in threads for _ in iter_steps(t["steps"])),
        "by_node": by_node,
    }


# ---- approaches ----------------------------------------------------------------------------------


def approach_info(spec: Spec) -> dict[str, Any]:
    try:
        defaults = spec.params().model_dump(mode="json")
    except ValidationError:  # a parameter without a default: no cost at defaults either
        defaults = {}
    return {
        "object": "approach",
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.params.model_json_schema(),
        "defaults": defaults,
        "calls": spec.calls,
        "rounds": spec.rounds,
        "expected_calls": spec.expected_calls or spec.calls,
        "default_calls": _formula(spec.calls, defaults),
        "default_rounds": _formula(spec.rounds, defaults),
        "default_expected_calls": _formula(spec.expected_calls or spec.calls, defaults),
        "needs": sorted(spec.needs),
        "papers": list(spec.papers),
        "streams_final": spec.streams_final,
        **_plugin_fields(spec),
    }


def _plugin_fields(spec: Spec) -> dict[str, Any]:
    if not isinstance(spec, PluginSpec):
        return {"kind": "approach"}
    return {"kind": "plugin", "stages": spec.stages, "streams_through": spec.stream is not None, "routes": spec.routes}


def _formula(formula: str, params: dict[str, Any]) -> int | None:
    try:
        return evaluate(formula, params)
    except (ValueError, TypeError, ZeroDivisionError, SyntaxError):
        return None


def expression_info(compiled: CompiledExpression, registry: Registry) -> dict[str, Any]:
    """A compiled expression: its drawing, its choices, and what it costs at default parameters."""
    infos = {name: approach_info(registry.get(name)) for name in compiled.names}
    calls, rounds = _cost(compiled.ast, infos)
    expected, _ = _cost(compiled.ast, infos, calls_key="default_expected_calls")
    return {
        "object": "approach_graph",
        "expression": compiled.text,
        "choices": compiled.choices,
        "mermaid": compiled.mermaid(),
        "approaches": list(infos.values()),
        "cost": {"calls": calls, "rounds": rounds, "expected_calls": expected},
    }


def _cost(
    ast: Node, infos: dict[str, dict[str, Any]], *, calls_key: str = "default_calls"
) -> tuple[int | None, int | None]:
    """Calls (at most, or expected with `calls_key="default_expected_calls"`) and dependent rounds: a
    pipeline stage runs once per answer of the stage before it and after it; parallel branches run at
    once."""
    if isinstance(ast, Approach):
        info = infos[ast.name]
        return info.get(calls_key), info.get("default_rounds")
    children = ast.stages if isinstance(ast, Pipeline) else ast.branches
    costs = [_cost(c, infos, calls_key=calls_key) for c in children]
    if any(c is None or r is None for c, r in costs):
        return None, None
    if isinstance(ast, Pipeline):
        calls, runs = 0, 1
        for child, (c, _) in zip(children, costs):
            calls += runs * c  # type: ignore[operator]
            runs *= choice_count(child)
        return calls, sum(r for _, r in costs)  # type: ignore[misc]
    return sum(c for c, _ in costs), max(r for _, r in costs)  # type: ignore[misc,type-var]


# ---- reading a database directly (no server) -----------------------------------------------------


def canonical(expression: str | None) -> str | None:
    """The stored (canonical) form of an expression filter: `none | none` finds `none|none`."""
    if expression is None:
        return None
    try:
        return to_text(parse(expression))
    except ExpressionError:
        return expression  # matches nothing (the web page's filter form shows "No runs")


def approach_filter(expression: str | None) -> str | None:
    """`canonical`, but a malformed expression is an InvalidRequest on `approach`: it could match no run."""
    if expression is None:
        return None
    try:
        return to_text(parse(expression))
    except ExpressionError as exc:
        raise InvalidRequest(
            f"approach filter: {exc.message}", param="approach", code="invalid_approach_expression"
        ) from None


async def read_runs(db_url: str, *, approach: str | None = None, **filters: Any) -> dict[str, Any]:
    """A page of runs from the database at `db_url`; `filters` are `page_runs`' other keywords."""
    db = open_database(db_url)
    try:
        page = await page_runs(db, expression=approach_filter(approach), **filters)
    finally:
        await db.dispose()
    return run_list(page.runs, has_more=page.has_more)


async def read_run(
    db_url: str, run_id: str, registry: Registry, *, max_chars: int | None = MAX_CHARS
) -> dict[str, Any] | None:
    """One run from the database at `db_url`, its steps from the checkpoints there; None if unknown."""
    db = open_database(db_url)
    try:
        row = await get_run(db, run_id)
        if row is None:
            return None
        async with open_checkpointer(db_url) as saver:
            return await run_detail(row, Compiler(registry, saver), max_chars=max_chars)
    finally:
        await db.dispose()


__all__ = [
    "approach_info",
    "canonical",
    "compile_expression",
    "expression_info",
    "iter_steps",
    "jsonable",
    "parse_expression",
    "read_run",
    "read_runs",
    "read_thread",
    "run_detail",
    "run_list",
    "run_summary",
    "thread_ids",
    "totals",
    "upstream_call",
]
