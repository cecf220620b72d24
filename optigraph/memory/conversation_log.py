"""Runs as OptILLM's conversation log: JSONL, one finished run per line, in daily files
`conversations_YYYY-MM-DD.jsonl` (the UTC day the run finished), so tools built on OptILLM's
`--log-conversations` files read optigraph's unchanged.

Each line is what OptILLM's ConversationLogger writes, read back from the runs table:
`timestamp` (the run's start), `request_id` (the run id), `approach` (the expression), `model`,
`client_request` (the body as the client sent it), `provider_calls` (each upstream call that answered:
`call_number`, `timestamp`, the `request` sent and the `response` as a chat.completion), `final_response`
(the answer, with the `timestamp` it was done), `total_duration_ms` and `error` (a message, or null).

Two ways to write them: `ConversationLog` (a Recorder around the server's own, `--log-conversations`)
appends each run once it is stored; `export` reads stored runs back (`optigraph runs export`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .queries import get_run
from .records import FINISHED_STATUSES, CallRecord, Recorder, RunRecord, RunResult
from .tables import RUNS, UPSTREAM_CALLS

logger = logging.getLogger(__name__)

EXPORT_BATCH = 200  # runs read per query by `export`


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _completion(choices: list[dict[str, Any]], *, model: str, usage: dict[str, int] | None) -> dict[str, Any]:
    """A chat.completion document from stored choices ({text, finish_reason[, tool_calls]} or messages)."""
    out = []
    for i, choice in enumerate(choices):
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {"role": "assistant", "content": choice.get("text")}
            if choice.get("tool_calls"):
                message["tool_calls"] = choice["tool_calls"]
        out.append({"index": i, "message": message, "finish_reason": choice.get("finish_reason") or "stop"})
    return {"object": "chat.completion", "model": model, "choices": out, "usage": usage}


def _call_usage(call: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(call.get("prompt_tokens") or 0), int(call.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _final_response(run: dict[str, Any], answered: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer the client got, as a chat.completion (a streamed one is rebuilt from what was stored)."""
    response = run.get("response")
    if run.get("status") != "completed" or not isinstance(response, dict):
        return None
    if not response.get("streamed"):
        body = dict(response)
    else:
        choices = response.get("choices")
        if choices is None and answered:  # a streamed passthrough stores no text: its one call has it
            choices = answered[-1]["response"].get("choices") or []
        body = _completion(choices or [], model=run["model"], usage=response.get("usage"))
        body["id"] = f"chatcmpl-{run['id']}"
    body["timestamp"] = _iso(run.get("finished_at"))
    return body


def conversation_entry(run: dict[str, Any]) -> dict[str, Any]:
    """One line of OptILLM's conversation log for a stored run (a `get_run` result: the run and its calls)."""
    answered = [c for c in run.get("upstream_calls") or [] if c.get("status") == "ok" and c.get("response")]
    calls = [
        {
            "call_number": i + 1,
            "timestamp": _iso(c.get("started_at")),
            "request": c.get("request") or {},
            "response": _completion(
                (c.get("response") or {}).get("choices") or [], model=c["model"], usage=_call_usage(c)
            ),
        }
        for i, c in enumerate(answered)
    ]
    error = run.get("error")
    if isinstance(error, dict):
        error = (error.get("error") or error).get("message") or str(error)
    latency = run.get("latency_ms")
    return {
        "timestamp": _iso(run.get("created_at")),
        "request_id": run["id"],
        "approach": run["expression"],
        "model": run["model"],
        "client_request": run.get("request") or {},
        "provider_calls": calls,
        "final_response": _final_response(run, [{"response": c["response"]} for c in calls]),
        "total_duration_ms": None if latency is None else int(latency),
        "error": error,
    }


def log_path(directory: Path, entry_day: datetime | None) -> Path:
    """OptILLM's daily file for a run that finished at `entry_day` (UTC; now when unknown)."""
    day = (entry_day or datetime.now(UTC)).astimezone(UTC)
    return directory / f"conversations_{day:%Y-%m-%d}.jsonl"


def line(entry: dict[str, Any]) -> bytes:
    return orjson.dumps(entry, default=str) + b"\n"


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)


async def finished_runs(db: AsyncEngine, *, since: datetime | None = None) -> AsyncIterator[dict[str, Any]]:
    """Every finished run (created at or after `since`), oldest first, each with its upstream calls;
    read `EXPORT_BATCH` runs at a time."""
    base = select(RUNS).where(RUNS.c.status.in_(FINISHED_STATUSES))
    if since is not None:
        base = base.where(RUNS.c.created_at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    last: tuple[datetime, str] | None = None
    while True:
        query = base
        if last is not None:
            query = query.where(
                or_(RUNS.c.created_at > last[0], and_(RUNS.c.created_at == last[0], RUNS.c.id > last[1]))
            )
        query = query.order_by(RUNS.c.created_at, RUNS.c.id).limit(EXPORT_BATCH)
        async with db.connect() as conn:
            rows = [dict(row) for row in (await conn.execute(query)).mappings()]
        if not rows:
            return
        runs = {row["id"]: {**row, "upstream_calls": []} for row in rows}
        for call in await db_calls(db, list(runs)):
            runs[call["run_id"]]["upstream_calls"].append(call)
        for run in runs.values():
            yield run
        last = (rows[-1]["created_at"], rows[-1]["id"])


async def db_calls(db: AsyncEngine, run_ids: list[str]) -> list[dict[str, Any]]:
    """The upstream calls of these runs, in the order they started."""
    query = (
        select(UPSTREAM_CALLS)
        .where(UPSTREAM_CALLS.c.run_id.in_(run_ids))
        .order_by(UPSTREAM_CALLS.c.started_at, UPSTREAM_CALLS.c.id)
    )
    async with db.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def export(
    db: AsyncEngine, *, since: datetime | None = None, out: TextIO | None = None, directory: Path | None = None
) -> int:
    """Writes the finished runs as conversation-log lines to `out`, or appends them to the daily files
    in `directory`; returns how many."""
    count = 0
    async for run in finished_runs(db, since=since):
        data = line(conversation_entry(run))
        if directory is not None:
            await asyncio.to_thread(_append, log_path(directory, run.get("finished_at")), data)
        elif out is not None:
            out.write(data.decode())
        count += 1
    return count


async def export_database(
    db_url: str, *, since: datetime | None = None, out: TextIO | None = None, directory: Path | None = None
) -> int:
    """`export` from the database at `db_url` (opened and closed here)."""
    from .db import open_database

    db = open_database(db_url)
    try:
        return await export(db, since=since, out=out, directory=directory)
    finally:
        await db.dispose()


class ConversationLog:
    """A Recorder that passes everything to `inner` and, once a finished run is stored, appends its
    conversation-log line to `directory` (from one background task, off the request's path)."""

    def __init__(self, inner: Recorder, db: AsyncEngine, directory: Path) -> None:
        self.inner = inner
        self.db = db
        self.directory = directory
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def run_started(self, run: RunRecord) -> None:
        self.inner.run_started(run)

    def run_finished(self, run_id: str, result: RunResult, *, run: RunRecord | None = None) -> None:
        self.inner.run_finished(run_id, result, run=run)
        self._pending.put_nowait(run_id)

    def call(self, record: CallRecord) -> None:
        self.inner.call(record)

    async def flush(self) -> None:
        """Waits until everything queued so far is stored and logged."""
        await self.inner.flush()
        await self._pending.join()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._writer(), name="optigraph-conversation-log")

    async def aclose(self) -> None:
        """Logs what is pending, then stops (the inner recorder is closed by its owner)."""
        if self._task is not None:
            if not self._task.done():
                await self.inner.flush()
                await self._pending.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _writer(self) -> None:
        while True:
            run_ids = [await self._pending.get()]
            while not self._pending.empty():
                run_ids.append(self._pending.get_nowait())
            try:
                await self.inner.flush()  # the runs are read back from the table: they must be there
                for run_id in run_ids:
                    await self._log(run_id)
            finally:
                for _ in run_ids:
                    self._pending.task_done()

    async def _log(self, run_id: str) -> None:
        try:
            run = await get_run(self.db, run_id)
            if run is None:
                logger.warning("conversation log: run %s is not stored; not logged", run_id)
                return
            path = log_path(self.directory, run.get("finished_at"))
            await asyncio.to_thread(_append, path, line(conversation_entry(run)))
        except Exception as exc:  # a log that cannot be written never fails a request
            logger.warning("conversation log: run %s not logged: %s: %s", run_id, type(exc).__name__, exc)
