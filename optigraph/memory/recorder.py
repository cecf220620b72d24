"""A Recorder that writes runs and upstream calls to SQL from one background task.

The runner's calls only append to a queue (O(1), no awaits). The writer wakes up, lingers a few
milliseconds so that a burst of records gathers, takes whatever accumulated, and writes it in one
transaction, so a busy server pays one commit per batch rather than one per record. On a SQLite file
the transaction runs whole in one worker-thread call on a blocking connection: through aiosqlite each
statement, the BEGIN, the COMMIT and the connection's return to the pool is a round trip to its
thread, about 1.4 ms of CPU per transaction, more than the rows of a batch of ten passthrough runs. (Without the
linger, a server answering one request at a time writes after every request, and that write
competes with the next request: about +0.8 ms median on the passthrough benchmark.) `flush()`,
`aclose()` and a full batch cut the linger short.

With `store_prompts=False` no prompt or answer text is written (memory/prompts.py), and runs are
recorded as not checkpointed (the server then runs graphs without a checkpointer: api/app.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import JSON, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import json_dumps, sqlite_file_engine
from .prompts import request_metadata, response_metadata
from .records import CallRecord, RunRecord, RunResult
from .tables import RUNS, UPSTREAM_CALLS, UtcDateTime

logger = logging.getLogger(__name__)

FINISH_COLUMNS = (
    "status",
    "finished_at",
    "latency_ms",
    "response",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "calls",
)


@dataclass(slots=True)
class _Started:
    run: RunRecord


@dataclass(slots=True)
class _Finished:
    run_id: str
    result: RunResult
    run: RunRecord | None


@dataclass(slots=True)
class _Call:
    record: CallRecord


@dataclass(slots=True)
class _Flush:
    done: asyncio.Future[None]


_Item = _Started | _Finished | _Call | _Flush


def run_row(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "parent_id": run.parent_id,
        "expression": run.expression,
        "model": run.model,
        "status": run.status,
        "request": run.request,
        "created_at": run.created_at,
        "checkpointed": run.checkpointed,
        "user": run.user,
        "spec": run.spec,
        "tenant": run.tenant,
    }


def metadata_only(table_row: dict[str, Any]) -> dict[str, Any]:
    """A run or call row without prompt or answer text (memory/prompts.py)."""
    out = dict(table_row)
    if "request" in out:
        out["request"] = request_metadata(out["request"])
    if "response" in out:
        out["response"] = response_metadata(out["response"])
    if "spec" in out:
        out["spec"] = None  # it holds the messages; without it the run cannot be rebuilt (nor resumed)
    if "checkpointed" in out:
        out["checkpointed"] = False
    return out


def finish_values(result: RunResult) -> dict[str, Any]:
    usage = result.usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "status": result.status,
        "finished_at": result.finished_at,
        "latency_ms": result.latency_ms,
        "response": result.response,
        "error": result.error,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": int(usage.get("reasoning_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "calls": int(usage.get("calls") or 0),
    }


def call_row(call: CallRecord) -> dict[str, Any]:
    return {
        "run_id": call.run_id,
        "node": call.node,
        "backend": call.backend,
        "model": call.model,
        "started_at": call.started_at,
        "latency_ms": call.latency_ms,
        "status": call.status,
        "request": call.request,
        "response": call.response,
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "reasoning_tokens": call.reasoning_tokens,
        "error": call.error,
        "attempt": call.attempt,
    }


def _sqlite_utc(value: datetime | None) -> str | None:
    """A UtcDateTime column's bind value on SQLite: the UTC time in the SQLite dialect's storage format,
    as SQLAlchemy's TypeDecorator and DATETIME processors make it, in one call."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value.microsecond and value.year >= 1000:  # orjson writes these exactly so, at a third of isoformat's cost
        return orjson.dumps(value)[1:27].decode().replace("T", " ")
    return value.isoformat(" ", "microseconds")[:26]  # without the offset; strftime costs ten times more


def _json_text(value: Any) -> str:
    return "null" if value is None else json_dumps(value)


def _fast_processor(column: Any, dialect: Any, processor: Any) -> Any:
    """A cheaper equivalent of `processor` for the column types the recorder writes most (a JSON
    document, a UTC timestamp) on SQLite; tests/memory/test_memory_recorder.py holds them to
    SQLAlchemy's output. Any other column keeps SQLAlchemy's processor."""
    if processor is None or column is None or dialect.name != "sqlite":
        return processor
    if isinstance(column.type, JSON):
        return _json_text  # what SQLAlchemy's JSON type sends through the engine's serializer (None as null)
    if isinstance(column.type, UtcDateTime):
        return _sqlite_utc
    return processor


@dataclass(frozen=True, slots=True)
class _Plain:
    """A statement as SQL text with positional parameters and the bind processors of its columns
    (JSON to text, timestamps to SQLite's format), for the DBAPI cursor's executemany.

    A row becomes its parameters with one `itemgetter` call, then a processor call for each column
    that needs one: building them column by column cost more than SQLite's work on the rows."""

    sql: str
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, processor) of the columns to convert
    defaults: dict[str, Any]  # columns the rows leave out, with the scalar default SQLAlchemy would send

    @classmethod
    def compile(cls, statement: Any, keys: tuple[str, ...], dialect: Any) -> _Plain | None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(getattr(compiled, "positiontup", None) or ())
        processors = getattr(compiled, "_bind_processors", None)
        if not names or processors is None:
            return None  # not positional: SQLAlchemy's path
        defaults = {}
        for name in set(names) - set(keys):
            column = statement.table.c.get(name)
            default = None if column is None else column.default
            if default is None or not default.is_scalar:
                return None  # a default computed at execution: SQLAlchemy's path
            defaults[name] = default.arg
        processed = []
        for i, name in enumerate(names):
            fast = _fast_processor(statement.table.c.get(name), dialect, processors.get(name))
            if fast is not None:
                processed.append((i, fast))
        getter = itemgetter(*names)
        if len(names) == 1:
            one = getter
            getter = lambda row: (one(row),)  # noqa: E731 - itemgetter of one name returns the value alone
        return cls(str(compiled), getter, tuple(processed), defaults)

    def values(self, row: dict[str, Any]) -> list[Any]:
        if self.defaults:
            row = {**self.defaults, **row}
        out = list(self.getter(row))
        for i, processor in self.processed:
            out[i] = processor(out[i])
        return out


class SqlRecorder:
    """Records runs and calls in the `runs` and `upstream_calls` tables (see memory/tables.py).

    Call `start()` from the event loop (or let the first record start it) and `await aclose()` at
    shutdown, which writes everything still queued. The database is borrowed, not disposed.
    """

    def __init__(
        self,
        db: AsyncEngine,
        *,
        max_batch: int = 1000,
        max_queue: int = 100_000,
        linger_s: float = 0.02,
        store_prompts: bool = True,
    ) -> None:
        self._db = db
        self._store_prompts = store_prompts
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._linger_s = linger_s
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None  # ends a linger early
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # after aclose(), records wait for an explicit start() or flush()
        self._dropped = 0
        dialect = db.dialect.name
        if dialect == "postgresql":
            insert = postgresql.insert
        elif dialect == "sqlite":
            insert = sqlite.insert
        else:
            raise ValueError(f"SqlRecorder supports SQLite and PostgreSQL, not {dialect}")
        # The statements are built once: building them (the upsert's `excluded` columns above all)
        # cost more CPU per batch than writing a batch of passthrough runs.
        self._insert_started = insert(RUNS).on_conflict_do_nothing(index_elements=["id"])
        upsert = insert(RUNS)
        self._upsert_complete = upsert.on_conflict_do_update(
            index_elements=["id"], set_={c: upsert.excluded[c] for c in FINISH_COLUMNS}
        )
        self._update_finished = (
            update(RUNS).where(RUNS.c.id == bindparam("_id")).values({c: bindparam(f"_{c}") for c in FINISH_COLUMNS})
        )
        self._insert_calls = UPSTREAM_CALLS.insert()
        self._plain: dict[tuple[int, tuple[str, ...]], _Plain | None] = {}  # statements compiled for the file
        self._file = sqlite_file_engine(db)  # a SQLite file: written from a worker thread (module docstring)

    # -- the Recorder interface: called on the hot path, so append and return -----------------

    def run_started(self, run: RunRecord) -> None:
        self._put(_Started(run))

    def run_finished(self, run_id: str, result: RunResult, *, run: RunRecord | None = None) -> None:
        self._put(_Finished(run_id, result, run))

    def call(self, record: CallRecord) -> None:
        self._put(_Call(record))

    async def flush(self) -> None:
        """Waits until everything queued before this call has been written (or failed and logged)."""
        if self._task is None or self._task.done():
            while self._queue:  # no writer running (closed, or never started): write inline
                await self._write(self._take())
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Flush(done))
        self._hurry_up()
        self._wake()
        await done

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the writer task on the running loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._closed = False
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="optigraph-recorder")

    async def aclose(self) -> None:
        """Writes what is queued, then stops the writer."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            self._hurry_up()
            self._wake()
            await task
        self._task = None
        while self._queue:  # records queued while no writer was running
            await self._write(self._take())
        if self._file is not None:
            self._file.dispose()  # its connections; a later write opens one again

    async def __aenter__(self) -> SqlRecorder:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the writer ----------------------------------------------------------------------------

    def _put(self, item: _Item) -> None:
        if len(self._queue) >= self._max_queue:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("recorder queue full (%d); dropped %d records so far", self._max_queue, self._dropped)
            return
        self._queue.append(item)
        if (self._task is None or self._task.done()) and not self._closed:
            try:
                self.start()
            except RuntimeError:  # no running loop: the record waits for start() or aclose()
                return
        if len(self._queue) >= self._max_batch:
            self._hurry_up()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.is_set():
            self._wakeup.set()

    def _hurry_up(self) -> None:
        if self._hurry is not None and not self._hurry.is_set():
            self._hurry.set()

    async def _linger(self) -> None:
        """Waits `linger_s` (or until hurried) so that records arriving meanwhile share a transaction."""
        hurry = self._hurry
        assert hurry is not None
        if not hurry.is_set():
            timer = asyncio.get_running_loop().call_later(self._linger_s, hurry.set)
            try:
                await hurry.wait()
            finally:
                timer.cancel()
        hurry.clear()

    def _take(self) -> list[_Item]:
        queue, n = self._queue, min(len(self._queue), self._max_batch)
        return [queue.popleft() for _ in range(n)]

    async def _writer(self) -> None:
        assert self._wakeup is not None
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if self._linger_s > 0 and not self._closed and len(self._queue) < self._max_batch:
                    await self._linger()
                await self._write(self._take())
        except asyncio.CancelledError:
            # Nobody will write what is left; release whoever waits in flush().
            for item in self._queue:
                if isinstance(item, _Flush) and not item.done.done():
                    item.done.set_exception(RuntimeError("recorder writer was cancelled"))
            raise

    async def _write(self, batch: list[_Item]) -> None:
        flushes = [item.done for item in batch if isinstance(item, _Flush)]
        records = [item for item in batch if not isinstance(item, _Flush)]
        try:
            if records:
                try:
                    await self._transaction(records)
                except Exception as exc:
                    if len(records) == 1:
                        self._log_dropped(records[0], exc)
                    else:
                        logger.exception("writing %d run/call records failed; retrying them one by one", len(records))
                        await self._write_one_by_one(records)
        except BaseException:
            for done in flushes:
                if not done.done():
                    done.set_exception(RuntimeError("recorder writer was cancelled"))
            raise
        for done in flushes:
            if not done.done():
                done.set_result(None)

    async def _write_one_by_one(self, records: list[_Item]) -> None:
        for record in records:
            try:
                await self._transaction([record])
            except Exception as exc:
                self._log_dropped(record, exc)

    @staticmethod
    def _log_dropped(record: _Item, exc: BaseException) -> None:
        kind = type(record).__name__.strip("_").lower()
        logger.error("dropped a %s record that cannot be written: %s", kind, exc, exc_info=exc)

    async def _transaction(self, records: list[_Item]) -> None:
        """Writes `records` in one transaction."""
        if self._file is not None:
            await asyncio.to_thread(self._transaction_in_thread, records)
            return
        async with self._db.begin() as conn:
            for statement, rows in self._statements(records):
                await conn.execute(statement, rows)

    def _transaction_in_thread(self, records: list[_Item]) -> None:
        assert self._file is not None
        statements = self._statements(records)
        compiled = [self._compiled(statement, rows) for statement, rows in statements]
        if any(c is None for c in compiled):
            with self._file.begin() as conn:
                self._execute(conn, records)
            return
        # The DBAPI connection directly: SQLAlchemy's execution path (contexts, per-row parameter
        # processing, result set-up) cost more instructions than the SQLite work of a batch.
        raw = self._file.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                for plain, (_, rows) in zip(compiled, statements, strict=True):
                    assert plain is not None
                    cursor.executemany(plain.sql, [plain.values(row) for row in rows])
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool

    def _compiled(self, statement: Any, rows: list[dict[str, Any]]) -> _Plain | None:
        """`statement` compiled once for the SQLite file with the columns of `rows` (each batch's rows of
        one statement share their keys), or None when it cannot be run as plain SQL."""
        keys = tuple(rows[0])
        key = (id(statement), keys)
        plain = self._plain.get(key)
        if plain is None and key not in self._plain:
            assert self._file is not None
            plain = self._plain[key] = _Plain.compile(statement, keys, self._file.dialect)
        if plain is not None and any(tuple(row) != keys for row in rows):
            return None
        return plain

    def _execute(self, conn: Connection, records: list[_Item]) -> None:
        for statement, rows in self._statements(records):
            conn.execute(statement, rows)

    def _statements(self, records: list[_Item]) -> list[tuple[Any, list[dict[str, Any]]]]:
        """The statements that write `records`, each with its rows."""
        started: dict[str, dict[str, Any]] = {}  # runs to insert as running
        complete: dict[str, dict[str, Any]] = {}  # whole rows: started in this batch or passed with run=
        finished: dict[str, dict[str, Any]] = {}  # finish fields for rows written by an earlier batch
        calls: list[dict[str, Any]] = []
        for item in records:
            if isinstance(item, _Call):
                calls.append(call_row(item.record))
            elif isinstance(item, _Started):
                started[item.run.id] = run_row(item.run)
            elif isinstance(item, _Finished):
                values = finish_values(item.result)
                row = started.pop(item.run_id, None) or complete.get(item.run_id)
                if row is None and item.run is not None:
                    row = run_row(item.run)
                if row is not None:
                    complete[item.run_id] = {**row, **values, "id": item.run_id}
                else:
                    finished[item.run_id] = {"_id": item.run_id, **{f"_{c}": v for c, v in values.items()}}

        if not self._store_prompts:
            started = {k: metadata_only(v) for k, v in started.items()}
            complete = {k: metadata_only(v) for k, v in complete.items()}
            for values in finished.values():
                values["_response"] = response_metadata(values["_response"])
            calls = [metadata_only(c) for c in calls]
        out: list[tuple[Any, list[dict[str, Any]]]] = []
        if started:
            out.append((self._insert_started, list(started.values())))
        if complete:
            out.append((self._upsert_complete, list(complete.values())))
        if finished:
            out.append((self._update_finished, list(finished.values())))
        if calls:
            out.append((self._insert_calls, calls))
        return out
