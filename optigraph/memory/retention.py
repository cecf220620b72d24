"""Deleting runs: one run on its tenant's request, and every run older than the retention age.

A run is deleted with everything stored for it: its upstream calls, its checkpoints (the LangGraph
savers' tables, whose threads are the run id or `<id>.<i>`), and the conversation memory it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .tables import MEMORY_CHUNKS, RUNS, UPSTREAM_CALLS

# The tables LangGraph's SQLite saver (checkpoints, writes) and PostgreSQL saver (checkpoints,
# checkpoint_blobs, checkpoint_writes) keep a thread's state in, each with a `thread_id` column.
CHECKPOINT_TABLES = ("checkpoints", "writes", "checkpoint_blobs", "checkpoint_writes")
PRUNE_BATCH = 500


async def _checkpoint_tables(conn: AsyncConnection) -> list[str]:
    names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    return [t for t in CHECKPOINT_TABLES if t in names]


async def drop_checkpoints(conn: AsyncConnection, run_ids: Sequence[str]) -> None:
    """Deletes the checkpoints of these runs' threads (`<id>` and `<id>.<i>`)."""
    tables = await _checkpoint_tables(conn)
    for run_id in run_ids:
        for table in tables:  # names from the fixed list above, never from input
            await conn.execute(
                text(f"DELETE FROM {table} WHERE thread_id = :id OR thread_id LIKE :threads"),
                {"id": run_id, "threads": f"{run_id}.%"},
            )


async def delete_runs(conn: AsyncConnection, run_ids: Sequence[str]) -> None:
    """Deletes these runs and everything stored for them, in the caller's transaction."""
    if not run_ids:
        return
    ids = list(run_ids)
    await conn.execute(delete(UPSTREAM_CALLS).where(UPSTREAM_CALLS.c.run_id.in_(ids)))
    await conn.execute(delete(MEMORY_CHUNKS).where(MEMORY_CHUNKS.c.run_id.in_(ids)))
    await drop_checkpoints(conn, ids)
    await conn.execute(delete(RUNS).where(RUNS.c.id.in_(ids)))


async def delete_run(db: AsyncEngine, run_id: str, *, tenant: str | None) -> bool:
    """Deletes one run of `tenant` (any tenant's when None); False when it has no such run."""
    query = select(RUNS.c.id).where(RUNS.c.id == run_id)
    if tenant is not None:
        query = query.where(RUNS.c.tenant == tenant)
    async with db.begin() as conn:
        if (await conn.execute(query)).first() is None:
            return False
        await delete_runs(conn, [run_id])
    return True


async def prune_runs(db: AsyncEngine, *, before: datetime, batch: int = PRUNE_BATCH) -> int:
    """Deletes every run created before `before` (and its calls, checkpoints and memory), in batches
    of `batch` runs per transaction; how many runs were deleted."""
    deleted = 0
    while True:
        async with db.begin() as conn:
            ids = [
                row[0] for row in await conn.execute(select(RUNS.c.id).where(RUNS.c.created_at < before).limit(batch))
            ]
            await delete_runs(conn, ids)
        deleted += len(ids)
        if len(ids) < batch:
            return deleted


async def orphan_calls(db: AsyncEngine, *, before: datetime) -> int:
    """Deletes upstream calls older than `before` whose run row was never written (a crash before
    the recorder wrote it); how many."""
    async with db.begin() as conn:
        known = select(RUNS.c.id).where(RUNS.c.id == UPSTREAM_CALLS.c.run_id).exists()
        result = await conn.execute(delete(UPSTREAM_CALLS).where(UPSTREAM_CALLS.c.started_at < before, ~known))
        return result.rowcount
