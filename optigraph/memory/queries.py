"""Reading runs and their upstream calls back, as plain dicts for the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from optigraph.errors import InvalidRequest

from .records import RUN_STATUSES
from .tables import RUNS, UPSTREAM_CALLS

MAX_LIMIT = 1000
BODY_COLUMNS = ("request", "response")  # the large columns a listing leaves out


async def get_run(db: AsyncEngine, run_id: str, *, tenant: str | None = None) -> dict[str, Any] | None:
    """One run's fields plus `upstream_calls`, its calls in the order they started; None if unknown,
    or when `tenant` is given and the run is another tenant's.

    (`calls` is the run's own column: how many upstream calls it made.)
    """
    query = select(RUNS).where(RUNS.c.id == run_id)
    if tenant is not None:
        query = query.where(RUNS.c.tenant == tenant)
    async with db.connect() as conn:
        run = (await conn.execute(query)).mappings().one_or_none()
        if run is None:
            return None
        calls = await conn.execute(
            select(UPSTREAM_CALLS)
            .where(UPSTREAM_CALLS.c.run_id == run_id)
            .order_by(UPSTREAM_CALLS.c.started_at, UPSTREAM_CALLS.c.id)
        )
        return {**run, "upstream_calls": [dict(row) for row in calls.mappings()]}


async def count_runs(db: AsyncEngine, *, status: str) -> int:
    """How many runs have this status."""
    async with db.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(RUNS).where(RUNS.c.status == status))).scalar_one()
        )


@dataclass
class RunPage:
    """One page of runs, newest first; `has_more` says whether a next page exists."""

    runs: list[dict[str, Any]]
    has_more: bool

    @property
    def next_cursor(self) -> str | None:
        """The id to pass as `after` for the next page."""
        return self.runs[-1]["id"] if self.has_more and self.runs else None


async def page_runs(
    db: AsyncEngine,
    *,
    status: str | None = None,
    expression: str | None = None,
    model: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    after: str | None = None,
    limit: int = 50,
    bodies: bool = False,
    tenant: str | None = None,
) -> RunPage:
    """A page of runs, newest first (ties broken by id), without their calls; only `tenant`'s when given.

    `after` is the last run id of the previous page; an unknown id or status is an InvalidRequest. Without
    `bodies` the large `request` and `response` columns are left out.
    """
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(
            f"unknown status {status!r}: one of {', '.join(RUN_STATUSES)}", param="status", code="invalid_value"
        )
    limit = max(1, min(int(limit), MAX_LIMIT))
    columns = list(RUNS.c) if bodies else [c for c in RUNS.c if c.name not in BODY_COLUMNS]
    query = _filtered(select(*columns), status=status, expression=expression, model=model)
    if tenant is not None:
        query = query.where(RUNS.c.tenant == tenant)
    if created_after is not None:
        query = query.where(RUNS.c.created_at > _utc(created_after))
    if created_before is not None:
        query = query.where(RUNS.c.created_at < _utc(created_before))
    query = query.order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc()).limit(limit + 1)
    async with db.connect() as conn:
        if after is not None:
            cursor = await _created_at(conn, after, tenant)
            if cursor is None:
                raise InvalidRequest(
                    f"unknown cursor {after!r}: pass the last run id of the previous page",
                    param="after",
                    code="invalid_cursor",
                )
            query = query.where(or_(RUNS.c.created_at < cursor, and_(RUNS.c.created_at == cursor, RUNS.c.id < after)))
        rows = (await conn.execute(query)).mappings().all()
    return RunPage(runs=[dict(row) for row in rows[:limit]], has_more=len(rows) > limit)


def _filtered(query: Select, *, status: str | None, expression: str | None, model: str | None) -> Select:
    if status is not None:
        query = query.where(RUNS.c.status == status)
    if expression is not None:
        query = query.where(RUNS.c.expression == expression)
    if model is not None:
        query = query.where(RUNS.c.model == model)
    return query


async def _created_at(conn: AsyncConnection, run_id: str, tenant: str | None) -> datetime | None:
    query = select(RUNS.c.created_at).where(RUNS.c.id == run_id)
    if tenant is not None:
        query = query.where(RUNS.c.tenant == tenant)
    return (await conn.execute(query)).scalar_one_or_none()


def _utc(value: datetime) -> datetime:
    """A naive datetime is taken as UTC, like the stored timestamps."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
