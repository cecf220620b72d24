"""Runs and upstream calls as table rows: their columns, their values, and what SQLite binds for them.

A row is a tuple of values in the order of its statement's columns (RUN_COLUMNS, FINISH_COLUMNS,
CALL_COLUMNS), built straight from the records without a dict per row. The recorder (memory/recorder.py)
runs each statement either through SQLAlchemy (PostgreSQL) or, on a SQLite file, as plain SQL on the
DBAPI cursor with the values converted here as SQLAlchemy's bind processors would convert them
(tests/memory/test_memory_recorder.py holds the two paths to the same stored bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Column, String, Table

from .db import json_dumps
from .prompts import request_metadata, response_metadata
from .records import CallRecord, RunRecord, RunResult
from .tables import UtcDateTime

Row = tuple[Any, ...]

RUN_COLUMNS = (
    "id",
    "parent_id",
    "expression",
    "model",
    "request",
    "created_at",
    "checkpointed",
    "user",
    "spec",
    "tenant",
    "status",  # last: a complete row is a run's values without it, then FINISH_COLUMNS
)
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
CALL_COLUMNS = (
    "run_id",
    "node",
    "backend",
    "model",
    "started_at",
    "latency_ms",
    "status",
    "request",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "error",
    "attempt",
)


def run_values(run: RunRecord, store_prompts: bool = True) -> Row:
    """A run's RUN_COLUMNS. Without stored prompts: its request's metadata only, and no spec (it holds
    the messages; without it the run cannot be rebuilt, nor resumed, so it is not checkpointed)."""
    if not store_prompts:
        return (
            run.id,
            run.parent_id,
            run.expression,
            run.model,
            request_metadata(run.request),
            run.created_at,
            False,
            run.user,
            None,
            run.tenant,
            run.status,
        )
    return (
        run.id,
        run.parent_id,
        run.expression,
        run.model,
        run.request,
        run.created_at,
        run.checkpointed,
        run.user,
        run.spec,
        run.tenant,
        run.status,
    )


def finish_values(result: RunResult, store_prompts: bool = True) -> Row:
    """How a run ended, as FINISH_COLUMNS."""
    usage = result.usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return (
        result.status,
        result.finished_at,
        result.latency_ms,
        result.response if store_prompts else response_metadata(result.response),
        result.error,
        prompt,
        completion,
        int(usage.get("reasoning_tokens") or 0),
        int(usage.get("total_tokens") or prompt + completion),
        int(usage.get("calls") or 0),
    )


def call_values(call: CallRecord, store_prompts: bool = True) -> Row:
    """An upstream call's CALL_COLUMNS (without stored prompts, the metadata of its request and answer)."""
    return (
        call.run_id,
        call.node,
        call.backend,
        call.model,
        call.started_at,
        call.latency_ms,
        call.status,
        call.request if store_prompts else request_metadata(call.request),
        call.response if store_prompts else response_metadata(call.response),
        call.prompt_tokens,
        call.completion_tokens,
        call.reasoning_tokens,
        call.error,
        call.attempt,
    )


def sqlite_utc(value: datetime | None) -> str | None:
    """A UtcDateTime column's bind value on SQLite: the UTC time in the SQLite dialect's storage format,
    as SQLAlchemy's TypeDecorator and DATETIME processors make it, in one call."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value.microsecond and value.year >= 1000:  # orjson writes these exactly so, at a third of isoformat's cost
        return orjson.dumps(value)[1:27].decode().replace("T", " ")
    return value.isoformat(" ", "microseconds")[:26]  # without the offset; strftime costs ten times more


def json_text(value: Any) -> str:
    return "null" if value is None else json_dumps(value)


def json_fragment(value: Any) -> orjson.Fragment | None:
    """A JSON document encoded now, for SQLAlchemy's path: the engine's serializer (memory/db.py
    `json_dumps`, orjson) writes a fragment's text as it is, and unlike the document's dicts and lists a
    fragment is nothing the garbage collector tracks while it waits in the recorder's queue."""
    return None if value is None else orjson.Fragment(json_dumps(value))


def sqlite_bool(value: Any) -> int | None:
    return None if value is None else int(value)


def zero_for_null(value: Any) -> Any:
    # Binding None costs the sqlite3 module a failed adapter search (it formats an AttributeError) that
    # took more than the rest of a column's work; 0 is bound as is and NULLIF(?, 0) stores NULL for it.
    # A text column's string is never equal to the integer 0 in SQLite, "0" and "" included.
    return 0 if value is None else value


# Rows per INSERT statement on SQLite: 32 rows of the widest statement (20 columns) stay under the
# 999 parameters of SQLite's oldest default limit.
SQLITE_ROWS_PER_INSERT = 32


@dataclass(frozen=True, slots=True)
class Statement:
    """One of the recorder's four statements: SQLAlchemy's form, run through the engine with a dict per
    row (PostgreSQL, or SQLite without a file), and for a SQLite file the same statement as SQL text with
    positional parameters, run on the DBAPI cursor with rows already converted as SQLAlchemy's bind
    processors convert them (`SqlRecorder._ready`; tests/memory/test_memory_recorder.py holds the two
    paths to the same stored bytes).

    On SQLite an INSERT takes many rows at once (`VALUES (...), (...)`): the sqlite3 module lets go of the
    interpreter lock around every step of a statement, and with the event loop's thread waiting for it,
    a step per row cost two thread switches per row."""

    statement: Any
    keys: tuple[str, ...]  # SQLAlchemy's parameter names, in the order of a row's values
    sqlite_sql: str  # an UPDATE, run once per row; or an INSERT's text up to VALUES
    sqlite_row: str | None = None  # an INSERT's row of parameter markers, "(?, ...)"
    sqlite_tail: str = ""  # what follows an INSERT's rows (ON CONFLICT...)
    _texts: dict[int, str] = field(default_factory=dict)  # an INSERT of n rows, by n

    def params(self, rows: list[Row]) -> list[dict[str, Any]]:
        keys = self.keys
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def write_sqlite(self, cursor: Any, rows: list[Row]) -> None:
        """Writes converted `rows` through a sqlite3 cursor."""
        if self.sqlite_row is None:
            cursor.executemany(self.sqlite_sql, rows)
            return
        start, left = 0, len(rows)
        while left:
            n = 1 << (min(left, SQLITE_ROWS_PER_INSERT).bit_length() - 1)  # a power of two: few distinct texts
            cursor.execute(self._insert_text(n), [v for row in rows[start : start + n] for v in row])
            start += n
            left -= n

    def _insert_text(self, n: int) -> str:
        text = self._texts.get(n)
        if text is None:
            assert self.sqlite_row is not None
            text = self._texts[n] = self.sqlite_sql + ", ".join([self.sqlite_row] * n) + self.sqlite_tail
        return text


def sqlite_conversion(column: Column[Any]) -> Callable[[Any], Any] | None:
    """What a value of `column` is bound as on SQLite, as SQLAlchemy binds it (None: the value itself)."""
    if isinstance(column.type, JSON):
        return json_text  # what SQLAlchemy's JSON type sends through the engine's serializer (None as null)
    if isinstance(column.type, UtcDateTime):
        return sqlite_utc
    if isinstance(column.type, Boolean):
        return sqlite_bool
    if isinstance(column.type, String) and column.nullable:
        return zero_for_null
    return None


Converters = tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, conversion) of the values to convert


def fragment_converters(table: Table, columns: tuple[str, ...]) -> Converters:
    """The conversions of `columns` for SQLAlchemy's path: JSON documents to fragments (`json_fragment`)."""
    return tuple((i, json_fragment) for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON))


def sqlite_form(table: Table, columns: tuple[str, ...]) -> tuple[list[str], Converters]:
    """The parameter markers of `columns` and the conversions of their values (see `zero_for_null`)."""
    marks, converters = [], []
    for i, name in enumerate(columns):
        convert = sqlite_conversion(table.c[name])
        marks.append("NULLIF(?, 0)" if convert is zero_for_null else "?")
        if convert is not None:
            converters.append((i, convert))
    return marks, tuple(converters)


def sqlite_insert(statement: Any, table: Table, columns: tuple[str, ...], conflict: str) -> Statement:
    marks, _ = sqlite_form(table, columns)
    names = ", ".join(f'"{c}"' for c in columns)
    return Statement(
        statement, columns, f'INSERT INTO "{table.name}" ({names}) VALUES ', f"({', '.join(marks)})", conflict
    )


def statement_journals_in_memory(dbapi_conn: Any, _record: Any) -> None:
    # An INSERT of many rows keeps the pages it changes in a statement journal (to undo the statement
    # alone if it fails), a temporary file once past 64 KiB: every page written twice more, by system
    # calls. The recorder's connections keep their temporary files in memory; they sort nothing.
    dbapi_conn.execute("PRAGMA temp_store=MEMORY")
