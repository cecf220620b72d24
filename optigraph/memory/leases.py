"""Leases on runs: which server executes a run, until when, kept in the runs table itself.

A lease is the pair (`lease_owner`, `lease_expires_at`) of a run's row. Taking it is one UPDATE that
matches only while the lease is free or expired, so of two servers (or two requests on one server)
trying at once exactly one succeeds, on SQLite and on PostgreSQL alike. The holder renews it while
the run executes and releases it at the end; a holder that dies stops renewing, and the lease is
free again once it expires.

Times come from the caller (a clock it is given), so that tests can move time on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import RUNS


async def take_lease(db: AsyncEngine, run_id: str, *, owner: str, now: datetime, ttl_s: float) -> bool:
    """Takes the run's lease for `ttl_s` seconds from `now`; False if another holder's has not expired."""
    stmt = (
        update(RUNS)
        .where(and_(RUNS.c.id == run_id, or_(RUNS.c.lease_expires_at.is_(None), RUNS.c.lease_expires_at <= now)))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
    )
    async with db.begin() as conn:
        return (await conn.execute(stmt)).rowcount == 1


async def renew_lease(db: AsyncEngine, run_id: str, *, owner: str, now: datetime, ttl_s: float) -> bool:
    """Extends the lease `owner` holds; False if it holds it no more."""
    stmt = (
        update(RUNS)
        .where(and_(RUNS.c.id == run_id, RUNS.c.lease_owner == owner))
        .values(lease_expires_at=now + timedelta(seconds=ttl_s))
    )
    async with db.begin() as conn:
        return (await conn.execute(stmt)).rowcount == 1


async def release_lease(db: AsyncEngine, run_id: str, *, owner: str) -> None:
    """Frees the lease if `owner` still holds it."""
    stmt = (
        update(RUNS)
        .where(and_(RUNS.c.id == run_id, RUNS.c.lease_owner == owner))
        .values(lease_owner=None, lease_expires_at=None)
    )
    async with db.begin() as conn:
        await conn.execute(stmt)
