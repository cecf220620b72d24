"""Reading runs and their upstream calls back, as plain dicts for the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import RUNS, UPSTREAM_CALLS

MAX_LIMIT = 1000


async def list_runs(
    engine: AsyncEngine,
    *,
    status: str | None = None,
    expression: str | None = None,
    model: str | None = None,
    limit: int = 50,
    before: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """Runs, newest first, without their calls.

    `before` pages backwards: a datetime keeps runs created earlier; a run id keeps the runs that
    come after that run in this order (pass the last id of the previous page).
    """
    query = select(RUNS).order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc())
    query = query.limit(max(1, min(int(limit), MAX_LIMIT)))
    if status is not None:
        query = query.where(RUNS.c.status == status)
    if expression is not None:
        query = query.where(RUNS.c.expression == expression)
    if model is not None:
        query = query.where(RUNS.c.model == model)
    async with engine.connect() as conn:
        if isinstance(before, datetime):
            query = query.where(RUNS.c.created_at < before)
        elif isinstance(before, str):
            cursor = (await conn.execute(select(RUNS.c.created_at).where(RUNS.c.id == before))).scalar_one_or_none()
            if cursor is None:
                return []
            query = query.where(
                or_(RUNS.c.created_at < cursor, and_(RUNS.c.created_at == cursor, RUNS.c.id < before))
            )
        rows = (await conn.execute(query)).mappings().all()
    return [dict(row) for row in rows]


async def get_run(engine: AsyncEngine, run_id: str) -> dict[str, Any] | None:
    """One run's fields plus `upstream_calls`, its calls in the order they started; None if unknown.

    (`calls` is the run's own column: how many upstream calls it made.)
    """
    async with engine.connect() as conn:
        run = (await conn.execute(select(RUNS).where(RUNS.c.id == run_id))).mappings().one_or_none()
        if run is None:
            return None
        calls = await conn.execute(
            select(UPSTREAM_CALLS)
            .where(UPSTREAM_CALLS.c.run_id == run_id)
            .order_by(UPSTREAM_CALLS.c.started_at, UPSTREAM_CALLS.c.id)
        )
        return {**run, "upstream_calls": [dict(row) for row in calls.mappings()]}
