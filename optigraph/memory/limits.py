"""Per-tenant limits, enforced through the shared database so that they hold across replicas.

Three limits, each 0 for none: requests per minute (`rpm`, a fixed window: the calendar minute),
runs in flight at once (`concurrent_runs`), and upstream tokens per UTC day (`tokens_per_day`: the
`total_tokens` of the tenant's runs created that day; a run's tokens count once it has finished, so
a run in flight can take a tenant over by its own usage). The server's defaults apply to every
tenant; a tenant's row in `tenant_limits` overrides them, and a key's own limits override both for
the requests made with that key (the counters are the tenant's all the same).

An admission is one transaction that first writes the tenant's `tenant_usage` row (a row lock on
PostgreSQL, the write lock on SQLite), so that two replicas checking the same tenant's limits at
once take turns: neither can count the other's slot as free. A run in flight holds a row in
`run_slots` until it ends; the server renews its slots while it lives, and the slots of a server that
died are free once they expire.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from optigraph.errors import RateLimited

from .tables import RUN_SLOTS, RUNS, TENANT_LIMITS, TENANT_USAGE

LIMIT_NAMES = ("rpm", "concurrent_runs", "tokens_per_day")
# What a client refused for concurrency is told to wait: a slot frees when some run ends, which no
# one can foresee.
CONCURRENCY_RETRY_S = 1


@dataclass(frozen=True)
class LimitValues:
    """Limits of one caller; 0 means none."""

    rpm: int = 0
    concurrent_runs: int = 0
    tokens_per_day: int = 0

    def any(self) -> bool:
        return bool(self.rpm or self.concurrent_runs or self.tokens_per_day)

    def overridden(self, overrides: dict[str, Any] | None) -> LimitValues:
        """These limits with the values `overrides` sets (None: keep this one's)."""
        if not overrides:
            return self
        values = {name: overrides[name] for name in LIMIT_NAMES if overrides.get(name) is not None}
        return replace(self, **values)


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def tenant_overrides(db: AsyncEngine, tenant: str) -> dict[str, Any] | None:
    """The tenant's own limits (its `tenant_limits` row), or None."""
    async with db.connect() as conn:
        row = (await conn.execute(select(TENANT_LIMITS).where(TENANT_LIMITS.c.tenant == tenant))).mappings().first()
    return dict(row) if row is not None else None


async def set_tenant_limits(db: AsyncEngine, tenant: str, **limits: int | None) -> dict[str, Any]:
    """Sets the tenant's limits that are given (0: none for this tenant, whatever the default is);
    returns its row."""
    values = {k: v for k, v in limits.items() if k in LIMIT_NAMES and v is not None}
    async with db.begin() as conn:
        stmt = _insert(conn)(TENANT_LIMITS).values(tenant=tenant, **values)
        if values:
            stmt = stmt.on_conflict_do_update(index_elements=["tenant"], set_=values)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["tenant"])
        await conn.execute(stmt)
        row = (await conn.execute(select(TENANT_LIMITS).where(TENANT_LIMITS.c.tenant == tenant))).mappings().one()
    return dict(row)


async def clear_tenant_limits(db: AsyncEngine, tenant: str) -> bool:
    """Removes the tenant's own limits (the defaults apply again); whether it had any."""
    async with db.begin() as conn:
        return (await conn.execute(delete(TENANT_LIMITS).where(TENANT_LIMITS.c.tenant == tenant))).rowcount > 0


async def list_tenant_limits(db: AsyncEngine) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        rows = await conn.execute(select(TENANT_LIMITS).order_by(TENANT_LIMITS.c.tenant))
        return [dict(row) for row in rows.mappings()]


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


async def admit(
    db: AsyncEngine, *, tenant: str, limits: LimitValues, owner: str, now: datetime, slot_ttl_s: float
) -> str | None:
    """Admits one run of `tenant` under `limits`, or raises RateLimited (429, with the seconds to
    wait). Returns the id of the run slot taken (None when there is no concurrency limit), to be
    released with `release` when the run ends."""
    window = now.replace(second=0, microsecond=0)
    async with db.begin() as conn:
        start = _insert(conn)(TENANT_USAGE).values(tenant=tenant, window_start=None, window_requests=0)
        await conn.execute(start.on_conflict_do_nothing(index_elements=["tenant"]))
        count = (
            await conn.execute(
                update(TENANT_USAGE)
                .where(TENANT_USAGE.c.tenant == tenant)
                .values(
                    window_requests=case(
                        (TENANT_USAGE.c.window_start == window, TENANT_USAGE.c.window_requests + 1), else_=1
                    ),
                    window_start=window,
                )
                .returning(TENANT_USAGE.c.window_requests)
            )
        ).scalar_one()
        if limits.rpm and count > limits.rpm:
            wait = (window + timedelta(minutes=1) - now).total_seconds()
            raise RateLimited(
                f"tenant {tenant!r} is over its limit of {limits.rpm} requests per minute",
                code="rate_limit_exceeded",
                retry_after=_retry_after(wait),
            )
        if limits.tokens_per_day:
            day = now.replace(hour=0, minute=0, second=0, microsecond=0)
            used = (
                await conn.execute(
                    select(func.coalesce(func.sum(RUNS.c.total_tokens), 0)).where(
                        RUNS.c.tenant == tenant, RUNS.c.created_at >= day
                    )
                )
            ).scalar_one()
            if int(used) >= limits.tokens_per_day:
                wait = (day + timedelta(days=1) - now).total_seconds()
                raise RateLimited(
                    f"tenant {tenant!r} has used {int(used)} of its {limits.tokens_per_day} upstream tokens "
                    "for today (UTC)",
                    code="tokens_per_day_exceeded",
                    retry_after=_retry_after(wait),
                )
        if not limits.concurrent_runs:
            return None
        live = (
            await conn.execute(
                select(func.count())
                .select_from(RUN_SLOTS)
                .where(RUN_SLOTS.c.tenant == tenant, RUN_SLOTS.c.expires_at > now)
            )
        ).scalar_one()
        if live >= limits.concurrent_runs:
            raise RateLimited(
                f"tenant {tenant!r} has {live} runs in flight, its limit of concurrent runs",
                code="concurrent_runs_exceeded",
                retry_after=CONCURRENCY_RETRY_S,
            )
        slot = uuid.uuid4().hex
        await conn.execute(
            RUN_SLOTS.insert().values(
                id=slot, tenant=tenant, owner=owner, expires_at=now + timedelta(seconds=slot_ttl_s)
            )
        )
    return slot


async def release(db: AsyncEngine, slot: str) -> None:
    """Frees a run slot (its run has ended)."""
    async with db.begin() as conn:
        await conn.execute(delete(RUN_SLOTS).where(RUN_SLOTS.c.id == slot))


async def renew_slots(db: AsyncEngine, slots: list[str], *, now: datetime, ttl_s: float) -> int:
    """Extends these slots (their runs are still going); drops expired slots of anyone. How many
    were renewed."""
    async with db.begin() as conn:
        await conn.execute(delete(RUN_SLOTS).where(RUN_SLOTS.c.expires_at <= now))
        if not slots:
            return 0
        result = await conn.execute(
            update(RUN_SLOTS).where(RUN_SLOTS.c.id.in_(slots)).values(expires_at=now + timedelta(seconds=ttl_s))
        )
        return result.rowcount
