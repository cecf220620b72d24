"""Database URLs and connections (SQLAlchemy engines, called `db` here): one user-facing URL, the right driver for each use."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5000
WAL_SWITCH_ATTEMPTS = 100  # x 50 ms: how long a connection waits for another to switch a new file to WAL
CHECK_TIMEOUT_S = 2.0  # /health's database check

# Drivers that can only be used from asyncio, and the defaults picked when a URL names none.
_ASYNC_ONLY = {"aiosqlite", "asyncpg", "psycopg_async"}
_ASYNC_CAPABLE = {"aiosqlite", "asyncpg", "psycopg", "psycopg_async"}
_DEFAULT_ASYNC = {"sqlite": "aiosqlite", "postgresql": "psycopg"}
_DEFAULT_SYNC = {"sqlite": None, "postgresql": "psycopg"}


def _parse(db_url: str) -> URL:
    url = make_url(db_url)
    if url.drivername.partition("+")[0] == "postgres":
        url = url.set(drivername="postgresql" + url.drivername[len("postgres") :])
    return url


def _with_driver(url: URL, driver: str | None) -> str:
    drivername = url.get_backend_name() + (f"+{driver}" if driver else "")
    return url.set(drivername=drivername).render_as_string(hide_password=False)


def backend_name(db_url: str) -> str:
    """'sqlite' or 'postgresql' (or another SQLAlchemy backend name)."""
    return _parse(db_url).get_backend_name()


def async_url(db_url: str) -> str:
    """The SQLAlchemy URL for an asyncio engine (sqlite+aiosqlite, postgresql+psycopg)."""
    url = _parse(db_url)
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if "+" in url.drivername and driver in _ASYNC_CAPABLE:
        return url.render_as_string(hide_password=False)
    if backend not in _DEFAULT_ASYNC:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")
    return _with_driver(url, _DEFAULT_ASYNC[backend])


def sync_url(db_url: str) -> str:
    """The SQLAlchemy URL for a blocking engine (sqlite, postgresql+psycopg), e.g. for migrations."""
    url = _parse(db_url)
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if "+" in url.drivername and driver not in _ASYNC_ONLY:
        return url.render_as_string(hide_password=False)
    if backend not in _DEFAULT_SYNC:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")
    return _with_driver(url, _DEFAULT_SYNC[backend])


def libpq_url(db_url: str) -> str:
    """A plain postgresql:// connection string for psycopg itself (no SQLAlchemy driver suffix)."""
    url = _parse(db_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return _with_driver(url, None)


def sqlite_path(db_url: str) -> str:
    """The file a SQLite URL names, or ':memory:'."""
    url = _parse(db_url)
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"not a SQLite URL: {url!r}")
    return url.database or ":memory:"


def ensure_sqlite_dir(db_url: str) -> None:
    """Creates the folder that will hold a SQLite file."""
    path = sqlite_path(db_url)
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def json_dumps(value: Any) -> str:
    # Traces hold whatever a node sent upstream; anything orjson cannot encode is stored as its str().
    # Keys that are not strings are written as strings; orjson's option for them doubles the cost of
    # every document, so it is used only for the documents that hold such keys.
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def switch_to_wal(execute: Callable[[str], Any]) -> None:
    """Runs `PRAGMA journal_mode=WAL` through `execute`, again while another connection is switching the
    file. Switching a new file takes an exclusive lock, and SQLite does not always call the busy handler
    for it: a second connection (another process starting on the same new file) gets "database is
    locked" at once. The mode is persistent, so the retry finds the file switched. Blocking (50 ms
    steps): it happens only while several connections open a new file together."""
    for attempt in range(WAL_SWITCH_ATTEMPTS):
        try:
            execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS - 1:
                raise
            time.sleep(0.05)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: the WAL switch may wait on a lock
        switch_to_wal(cursor.execute)
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL, much cheaper than FULL
    finally:
        cursor.close()


def open_database(db_url: str, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine for the user's URL. SQLite gets WAL and a busy timeout on every connection."""
    kwargs.setdefault("json_serializer", json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if backend_name(db_url) == "sqlite":
        ensure_sqlite_dir(db_url)
        db = create_async_engine(async_url(db_url), **kwargs)
        event.listen(db.sync_engine, "connect", _sqlite_pragmas)
        return db
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(async_url(db_url), **kwargs)


def sqlite_file_engine(db: AsyncEngine) -> Engine | None:
    """A blocking engine on the SQLite file of `db` (same pragmas and JSON encoding), for work done in
    one worker-thread call; None when `db` is not a SQLite file (PostgreSQL, an in-memory database)."""
    url = db.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    engine = create_engine(url.set(drivername="sqlite"), json_serializer=json_dumps, json_deserializer=orjson.loads)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


async def check_database(db: AsyncEngine, db_url: str, *, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when the database answers one query on the runs table within `timeout_s`; else why not.

    SQLite is checked on a new connection to the file, opened read-write without creating it: a pooled
    connection keeps working on a file that was deleted or replaced, while new runs would be lost."""
    try:
        async with asyncio.timeout(timeout_s):
            path = sqlite_path(db_url) if backend_name(db_url) == "sqlite" else None
            if path is not None and path != ":memory:" and not path.startswith("file:"):
                await asyncio.to_thread(_check_sqlite_file, Path(path).expanduser(), timeout_s)
            else:
                async with db.connect() as conn:
                    await conn.execute(text("SELECT 1 FROM runs LIMIT 1"))
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:  # whatever the driver raises, reported as it is
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_sqlite_file(path: Path, timeout_s: float) -> None:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s)
    try:
        con.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
    finally:
        con.close()
