"""Conversation memory on SQLite and PostgreSQL: stored by conversation and tenant, read back in order."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.memory.conversations import ConversationStore
from optigraph.memory.tables import MEMORY_CHUNKS


async def test_chunks_come_back_in_the_order_stored_per_conversation(engine: AsyncEngine) -> None:
    store = ConversationStore(engine)
    await store.remember("c1", "run-a", [("user", "my cat is Miso"), ("assistant", "noted")])
    await store.remember("c2", "run-b", [("user", "unrelated")])
    await store.remember("c1", "run-c", [("user", "and my dog?"), ("assistant", "tell me")])
    got = await store.recall("c1")
    assert [(c.role, c.text, c.run_id) for c in got] == [
        ("user", "my cat is Miso", "run-a"),
        ("assistant", "noted", "run-a"),
        ("user", "and my dog?", "run-c"),
        ("assistant", "tell me", "run-c"),
    ]
    assert all(c.created_at.tzinfo is not None for c in got)
    assert [c.text for c in await store.recall("c2")] == ["unrelated"]
    assert await store.recall("unknown") == []


async def test_the_most_recent_chunks_are_kept_when_limited(engine: AsyncEngine) -> None:
    store = ConversationStore(engine)
    for i in range(5):
        await store.remember("c", f"run-{i}", [("user", f"turn {i}")])
    assert [c.text for c in await store.recall("c", limit=2)] == ["turn 3", "turn 4"]


async def test_storing_a_run_again_replaces_its_chunks(engine: AsyncEngine) -> None:
    store = ConversationStore(engine)
    await store.remember("c", "run-a", [("user", "first try"), ("assistant", "partial")])
    await store.remember("c", "run-a", [("user", "first try"), ("assistant", "whole answer")])
    assert [c.text for c in await store.recall("c")] == ["first try", "whole answer"]


async def test_tenants_scope_a_conversation_id(engine: AsyncEngine) -> None:
    store = ConversationStore(engine)
    await store.remember("c", "run-1", [("user", "no tenant")])
    await store.remember("c", "run-2", [("user", "acme's")], tenant="acme")
    await store.remember("c", "run-3", [("user", "globex's")], tenant="globex")
    assert [c.text for c in await store.recall("c")] == ["no tenant"]
    assert [c.text for c in await store.recall("c", tenant="acme")] == ["acme's"]
    assert await store.forget("c", tenant="acme") == 1
    assert await store.recall("c", tenant="acme") == []
    assert [c.text for c in await store.recall("c", tenant="globex")] == ["globex's"]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(MEMORY_CHUNKS))).scalar_one() == 2
