"""LangGraph checkpointers on the server's database: SQLite file or PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .db import (
    SQLITE_BUSY_TIMEOUT_MS,
    WAL_SWITCH_ATTEMPTS,
    backend_name,
    ensure_sqlite_dir,
    libpq_url,
    sqlite_path,
)

# Serializes the savers' own table setup when several replicas start at once.
SETUP_LOCK_ID = int.from_bytes(hashlib.sha256(b"optigraph.checkpoints.setup").digest()[:8], "big", signed=True)


@asynccontextmanager
async def open_checkpointer(db_url: str, *, max_connections: int = 20) -> AsyncIterator[BaseCheckpointSaver]:
    """Yields a ready LangGraph saver (tables created) for db_url; closes its connections on exit."""
    backend = backend_name(db_url)
    if backend == "sqlite":
        async with _sqlite_saver(db_url) as saver:
            yield saver
    elif backend == "postgresql":
        async with _postgres_saver(db_url, max_connections) as saver:
            yield saver
    else:
        raise ValueError(f"no checkpointer for {backend} databases; use SQLite or PostgreSQL")


@asynccontextmanager
async def _sqlite_saver(db_url: str) -> AsyncIterator[AsyncSqliteSaver]:
    ensure_sqlite_dir(db_url)
    # Switching a new file to WAL takes an exclusive lock, and SQLite does not always call the busy
    # handler for it: a second connection doing the same at that moment gets "database is locked" at
    # once, so the switch is tried again (the mode is persistent: once one connection has switched
    # the file, the others find it in WAL).
    async with aiosqlite.connect(sqlite_path(db_url), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000) as conn:
        await conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        for attempt in range(WAL_SWITCH_ATTEMPTS):
            try:
                await conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:  # another connection is switching the new file
                if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05)
        await conn.execute("PRAGMA synchronous=NORMAL")
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        yield saver


@asynccontextmanager
async def _postgres_saver(db_url: str, max_connections: int) -> AsyncIterator[AsyncPostgresSaver]:
    conninfo = libpq_url(db_url)
    # What AsyncPostgresSaver requires of its connections.
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        conninfo, kwargs=kwargs, min_size=1, max_size=max_connections, open=False, name="optigraph-checkpoints"
    ) as pool:
        saver = AsyncPostgresSaver(pool)
        # setup() is not safe to run concurrently (CREATE TABLE IF NOT EXISTS races, duplicate
        # migration rows), so hold a session lock on a side connection while it runs.
        async with await AsyncConnection.connect(conninfo, autocommit=True) as lock_conn:
            await _advisory_lock(lock_conn, SETUP_LOCK_ID)
            try:
                await saver.setup()
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK_ID,))
        yield saver


async def _advisory_lock(conn: AsyncConnection, key: int) -> None:
    # Polls rather than blocking in pg_advisory_lock: a blocked statement holds a snapshot, and
    # the saver's CREATE INDEX CONCURRENTLY in the lock holder would wait for it forever.
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.05)
