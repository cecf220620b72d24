"""A Recorder that writes runs and upstream calls to SQL from one background task.

The runner's calls turn a record into rows ready to bind and append them to a queue (no awaits; see
`_Started` for why the conversion happens there rather than in the writer). The writer wakes up, lingers a few
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
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import bindparam, event, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import json_dumps, sqlite_file_engine
from .record_rows import (
    CALL_COLUMNS,
    FINISH_COLUMNS,
    RUN_COLUMNS,
    Converters,
    Row,
    Statement,
    call_values,
    finish_values,
    fragment_converters,
    run_values,
    sqlite_form,
    sqlite_insert,
    statement_journals_in_memory,
)
from .records import CallRecord, RunRecord, RunResult
from .tables import RUNS, UPSTREAM_CALLS

logger = logging.getLogger(__name__)


# What waits in the queue is rows (memory/record_rows.py) ready to bind, in named tuples: for a SQLite
# file the values are already converted (JSON documents as text, timestamps as SQLite's), for
# SQLAlchemy's path the documents are orjson fragments, so a queued record is one small object the
# garbage collector tracks (the named tuple) and no container. Holding the records' dicts and lists
# until the write (tens of milliseconds) promoted them to the oldest generation, whose growth set off
# full collections: about a tenth of a passthrough request's CPU went to the collector.


class _Started(NamedTuple):
    run_id: str
    row: Row  # RUN_COLUMNS


class _Finished(NamedTuple):
    run_id: str
    finish: Row  # FINISH_COLUMNS
    row: Row | None  # the run's RUN_COLUMNS, when it was not started


class _Call(NamedTuple):
    row: Row  # CALL_COLUMNS


@dataclass(slots=True)
class _Flush:
    done: asyncio.Future[None]


_Item = _Started | _Finished | _Call | _Flush


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
        plain_sqlite: bool = True,
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
        run_and_finish = RUN_COLUMNS[:-1] + FINISH_COLUMNS
        upsert = insert(RUNS)
        finish_marks, finish_converters = sqlite_form(RUNS, FINISH_COLUMNS)
        set_finish = ", ".join(f'"{c}" = {mark}' for c, mark in zip(FINISH_COLUMNS, finish_marks, strict=True))
        set_excluded = ", ".join(f'"{c}" = excluded."{c}"' for c in FINISH_COLUMNS)
        self._insert_started = sqlite_insert(
            insert(RUNS).on_conflict_do_nothing(index_elements=["id"]),
            RUNS,
            RUN_COLUMNS,
            ' ON CONFLICT ("id") DO NOTHING',
        )
        self._upsert_complete = sqlite_insert(
            upsert.on_conflict_do_update(index_elements=["id"], set_={c: upsert.excluded[c] for c in FINISH_COLUMNS}),
            RUNS,
            run_and_finish,
            f' ON CONFLICT ("id") DO UPDATE SET {set_excluded}',
        )
        self._update_finished = Statement(
            update(RUNS).where(RUNS.c.id == bindparam("_id")).values({c: bindparam(f"_{c}") for c in FINISH_COLUMNS}),
            tuple(f"_{c}" for c in (*FINISH_COLUMNS, "id")),
            f'UPDATE "runs" SET {set_finish} WHERE "id" = ?',
        )
        self._insert_calls = sqlite_insert(UPSTREAM_CALLS.insert(), UPSTREAM_CALLS, CALL_COLUMNS, "")
        # A SQLite file is written from a worker thread with plain SQL (module docstring); plain_sqlite=False
        # keeps SQLAlchemy's statements there too (the tests compare what the two store).
        self._file = sqlite_file_engine(db) if plain_sqlite else None
        # What a record's values go through as it is queued (see _Started): for a SQLite file, what
        # SQLAlchemy's bind processors would do; for SQLAlchemy's path on an engine that serializes JSON
        # with memory/db.py's `json_dumps` (open_database), its documents encoded as orjson fragments;
        # on any other engine, nothing.
        self._run_converters: Converters = ()
        self._finish_converters: Converters = ()
        self._call_converters: Converters = ()
        if self._file is not None:
            event.listen(self._file, "connect", statement_journals_in_memory)
            self._run_converters = sqlite_form(RUNS, RUN_COLUMNS)[1]
            self._finish_converters = finish_converters
            self._call_converters = sqlite_form(UPSTREAM_CALLS, CALL_COLUMNS)[1]
        elif getattr(db.dialect, "_json_serializer", None) is json_dumps:
            self._run_converters = fragment_converters(RUNS, RUN_COLUMNS)
            self._finish_converters = fragment_converters(RUNS, FINISH_COLUMNS)
            self._call_converters = fragment_converters(UPSTREAM_CALLS, CALL_COLUMNS)

    # -- the Recorder interface: called on the hot path: a record becomes its rows, queued at once --

    def run_started(self, run: RunRecord) -> None:
        try:
            item = _Started(run.id, self._ready(run_values(run, self._store_prompts), self._run_converters))
        except Exception as exc:  # a value that cannot be stored (converted here for a SQLite file)
            self._log_dropped("run", exc)
            return
        self._put(item)

    def run_finished(self, run_id: str, result: RunResult, *, run: RunRecord | None = None) -> None:
        try:
            finish = self._ready(finish_values(result, self._store_prompts), self._finish_converters)
            row = None if run is None else self._ready(run_values(run, self._store_prompts), self._run_converters)
        except Exception as exc:
            self._log_dropped("finished", exc)
            return
        self._put(_Finished(run_id, finish, row))

    def call(self, record: CallRecord) -> None:
        try:
            item = _Call(self._ready(call_values(record, self._store_prompts), self._call_converters))
        except Exception as exc:
            self._log_dropped("call", exc)
            return
        self._put(item)

    @staticmethod
    def _ready(row: Row, converters: Converters) -> Row:
        """`row` as its statement binds it: converted for a SQLite file (the converters), else as is."""
        if not converters:
            return row
        values = list(row)
        for i, convert in converters:
            values[i] = convert(values[i])
        return tuple(values)

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
    def _log_dropped(record: _Item | str, exc: BaseException) -> None:
        kind = record if isinstance(record, str) else type(record).__name__.strip("_").lower()
        logger.error("dropped a %s record that cannot be written: %s", kind, exc, exc_info=exc)

    async def _transaction(self, records: list[_Item]) -> None:
        """Writes `records` in one transaction."""
        if self._file is not None:
            await asyncio.to_thread(self._transaction_in_thread, records)
            return
        async with self._db.begin() as conn:
            for statement, rows in self._statements(records):
                await conn.execute(statement.statement, statement.params(rows))

    def _transaction_in_thread(self, records: list[_Item]) -> None:
        # The DBAPI connection directly: SQLAlchemy's execution path (contexts, per-row parameter
        # processing, result set-up) cost more instructions than the SQLite work of a batch.
        assert self._file is not None
        statements = self._statements(records)
        raw = self._file.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                for statement, rows in statements:
                    statement.write_sqlite(cursor, rows)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool

    def _statements(self, records: list[_Item]) -> list[tuple[Statement, list[Row]]]:
        """The statements that write `records`, each with its rows."""
        started: dict[str, Row] = {}  # runs to insert as running (RUN_COLUMNS)
        complete: dict[str, Row] = {}  # whole rows: started in this batch or passed with run=
        finished: dict[str, Row] = {}  # FINISH_COLUMNS and the id, for rows written by an earlier batch
        calls: list[Row] = []
        n_run = len(RUN_COLUMNS) - 1  # a complete row: the run's values but its status, then the finish
        for item in records:
            if isinstance(item, _Call):
                calls.append(item.row)
            elif isinstance(item, _Started):
                started[item.run_id] = item.row
            elif isinstance(item, _Finished):
                run_id = item.run_id
                row = started.pop(run_id, None) or complete.get(run_id) or item.row
                if row is None:
                    finished[run_id] = (*item.finish, run_id)
                elif row[0] == run_id:
                    complete[run_id] = row[:n_run] + item.finish
                else:  # the row under this run's id
                    complete[run_id] = (run_id, *row[1:n_run], *item.finish)
        out: list[tuple[Statement, list[Row]]] = []
        if started:
            out.append((self._insert_started, list(started.values())))
        if complete:
            out.append((self._upsert_complete, list(complete.values())))
        if finished:
            out.append((self._update_finished, list(finished.values())))
        if calls:
            out.append((self._insert_calls, calls))
        return out
