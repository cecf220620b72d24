"""Admissions under per-tenant limits (memory/limits.py) and database keys (memory/keys.py), on
SQLite and PostgreSQL, with the time given by the test."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.errors import NotFound, RateLimited
from optigraph.memory.keys import create_key, find_key, list_keys, revoke_key
from optigraph.memory.limits import LimitValues, admit, release, renew_slots

T0 = datetime(2026, 12, 5, 12, 0, 10, tzinfo=UTC)


async def test_concurrent_admissions_never_exceed_the_limit(engine: AsyncEngine) -> None:
    limits = LimitValues(concurrent_runs=3)

    async def one(i: int) -> str | None:
        try:
            return await admit(engine, tenant="t", limits=limits, owner=f"o{i % 2}", now=T0, slot_ttl_s=60)
        except RateLimited as exc:
            assert exc.code == "concurrent_runs_exceeded" and exc.retry_after == 1
            return None

    slots = await asyncio.gather(*(one(i) for i in range(12)))
    taken = [s for s in slots if s]
    assert len(taken) == 3
    await release(engine, taken[0])
    assert await one(0) is not None  # a freed slot is free again


async def test_a_dead_servers_slots_expire_and_live_ones_are_renewed(engine: AsyncEngine) -> None:
    limits = LimitValues(concurrent_runs=1)
    await admit(engine, tenant="t", limits=limits, owner="dead", now=T0, slot_ttl_s=60)
    live = await admit(engine, tenant="u", limits=limits, owner="live", now=T0, slot_ttl_s=60)
    assert live
    later = T0 + timedelta(seconds=50)
    assert await renew_slots(engine, [live], now=later, ttl_s=60) == 1
    after_expiry = T0 + timedelta(seconds=61)
    assert await admit(engine, tenant="t", limits=limits, owner="other", now=after_expiry, slot_ttl_s=60)
    with pytest.raises(RateLimited):  # the renewed slot still holds its tenant's one run
        await admit(engine, tenant="u", limits=limits, owner="other", now=after_expiry, slot_ttl_s=60)


async def test_requests_per_minute_in_calendar_minutes(engine: AsyncEngine) -> None:
    limits = LimitValues(rpm=2)
    for _ in range(2):
        assert await admit(engine, tenant="t", limits=limits, owner="o", now=T0, slot_ttl_s=60) is None
    with pytest.raises(RateLimited) as info:
        await admit(engine, tenant="t", limits=limits, owner="o", now=T0 + timedelta(seconds=5), slot_ttl_s=60)
    assert info.value.retry_after == 45 and info.value.code == "rate_limit_exceeded"
    await admit(engine, tenant="other", limits=limits, owner="o", now=T0, slot_ttl_s=60)  # its own count
    await admit(engine, tenant="t", limits=limits, owner="o", now=T0 + timedelta(seconds=50), slot_ttl_s=60)


async def test_keys_are_stored_as_digests_and_revoked(engine: AsyncEngine) -> None:
    stored, key = await create_key(engine, name="ci", tenant="team", scopes=["runs:read", "chat"])
    assert key.startswith(f"og_{stored.id}_") and len(key) > 40
    assert (await find_key(engine, key)) == stored
    assert await find_key(engine, key + "x") is None
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
    assert rows and all(key not in str(row) for row in rows)  # never the key itself
    assert [k.name for k in await list_keys(engine)] == ["ci"]
    await revoke_key(engine, "ci")
    assert await find_key(engine, key) is None
    assert await list_keys(engine) == [] and len(await list_keys(engine, include_revoked=True)) == 1
    with pytest.raises(NotFound):
        await revoke_key(engine, "ci")
