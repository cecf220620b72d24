"""The spl strategy store on SQLite and PostgreSQL: records, refinements, pruning, edits, tenants."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.memory.strategies import MAX_TEXT_CHARS, StrategyStore


async def test_uses_successes_and_refinements_are_recorded(engine: AsyncEngine) -> None:
    store = StrategyStore(engine)
    a = await store.add("arithmetic", "Carry carefully.", source_run="run-1")
    b = await store.add("arithmetic", "Estimate first.")
    await store.record([a.id, b.id], success=True, example="What is 9 * 9?")
    await store.record([a.id], success=False, example="What is 8 * 7?")
    await store.refine(a.id, "Carry every digit carefully.")
    got = await store.get(a.id)
    assert got is not None
    assert (got.text, got.uses, got.successes, got.refinements, got.example, got.source_run) == (
        "Carry every digit carefully.",
        2,
        1,
        1,
        "What is 8 * 7?",
        "run-1",
    )
    assert got.success_rate == 0.5 and got.updated_at >= got.created_at
    assert [s.id for s in await store.read("arithmetic")] == [b.id, a.id]  # 2/3 before 2/4


async def test_prune_keeps_the_best_of_a_type_only(engine: AsyncEngine) -> None:
    store = StrategyStore(engine)
    good = await store.add("logic", "Draw a table.", uses=10, successes=9)
    bad = await store.add("logic", "Guess.", uses=10, successes=1)
    new = await store.add("logic", "List the cases.")
    other = await store.add("code", "Write tests first.", uses=10, successes=0)
    assert await store.prune("logic", 2) == [bad.id]
    assert {s.id for s in await store.read()} == {good.id, new.id, other.id}


async def test_edit_delete_import_and_limits(engine: AsyncEngine) -> None:
    store = StrategyStore(engine)
    s = await store.add("factual", "x" * (MAX_TEXT_CHARS + 50), uses=1, successes=5)
    assert len(s.text) == MAX_TEXT_CHARS and s.successes == 1  # never more successes than uses
    edited = await store.edit(s.id, text="Name the source.", problem_type="chat", uses=3)
    assert edited is not None and (edited.text, edited.problem_type, edited.uses) == ("Name the source.", "chat", 3)
    assert await store.edit(s.id + 100, text="nothing") is None
    [copy] = await store.import_many([{"problem_type": "chat", "text": "Be kind.", "uses": 2, "successes": 1}])
    assert (copy.uses, copy.successes, copy.source_run) == (2, 1, None)
    assert await store.delete(s.id) and not await store.delete(s.id)
    assert [x.text for x in await store.read()] == ["Be kind."]


async def test_tenants_see_only_their_own(engine: AsyncEngine) -> None:
    store = StrategyStore(engine)
    mine = await store.add("code", "Read the error first.", tenant="acme")
    await store.add("code", "Shared advice.")
    assert [s.text for s in await store.read("code")] == ["Shared advice."]
    assert [s.text for s in await store.read("code", tenant="acme")] == ["Read the error first."]
    assert await store.get(mine.id) is None and await store.get(mine.id, tenant="acme") is not None
    assert not await store.delete(mine.id)  # not the unscoped store's
