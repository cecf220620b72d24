from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.errors import InvalidRequest
from optigraph.memory.db import open_database
from optigraph.memory.queries import get_run, page_runs
from optigraph.memory.recorder import SqlRecorder
from optigraph.memory.records import CallRecord, RunRecord, RunResult
from optigraph.memory.tables import RUNS, UPSTREAM_CALLS

T0 = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
BLOB = object()  # not JSON: stored as its str()
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "reasoning_tokens": 2, "calls": 2}


def a_run(run_id: str = "run-1", **kw) -> RunRecord:
    return RunRecord(
        id=run_id,
        expression=kw.pop("expression", "bon&re2"),
        model=kw.pop("model", "gpt-x"),
        request={"messages": [{"role": "user", "content": "hi"}], "n": 1},
        created_at=kw.pop("created_at", T0),
        **kw,
    )


def a_result(status: str = "completed") -> RunResult:
    return RunResult(
        status=status,
        finished_at=T0 + timedelta(seconds=2),
        latency_ms=2000.5,
        usage=USAGE,
        response={"choices": [{"message": {"content": "hello"}}]},
    )


def a_call(run_id: str = "run-1", node: str | None = "sample", offset_ms: int = 0, **kw) -> CallRecord:
    return CallRecord(
        run_id=run_id,
        node=node,  # type: ignore[arg-type]
        backend="openai",
        model="gpt-x",
        started_at=kw.pop("started_at", T0 + timedelta(milliseconds=offset_ms)),
        latency_ms=12.5,
        status=kw.pop("status", "ok"),
        request=kw.pop("request", {"messages": [{"role": "user", "content": "hi"}]}),
        response=kw.pop("response", {"choices": [{"text": "hello", "finish_reason": "stop"}]}),
        prompt_tokens=5,
        completion_tokens=3,
        **kw,
    )


async def count(engine: AsyncEngine, table) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def test_runs_and_calls_survive_reopening(engine: AsyncEngine, db_url: str) -> None:
    recorder = SqlRecorder(engine)
    recorder.start()
    recorder.run_started(a_run(user="alice", parent_id="run-0", checkpointed=True))
    recorder.call(a_call(node="rate", offset_ms=20))
    recorder.call(a_call(node="sample", offset_ms=10))
    recorder.call(a_call(node="rate", offset_ms=20, status="error", error="timeout", attempt=2))
    recorder.run_finished("run-1", a_result())
    await recorder.aclose()
    await engine.dispose()

    reopened = open_database(db_url)
    try:
        run = await get_run(reopened, "run-1")
    finally:
        await reopened.dispose()
    assert run is not None
    assert run["status"] == "completed"
    assert run["expression"] == "bon&re2" and run["model"] == "gpt-x" and run["user"] == "alice"
    assert run["parent_id"] == "run-0" and run["checkpointed"] is True
    assert run["request"]["messages"][0]["content"] == "hi"
    assert run["response"] == {"choices": [{"message": {"content": "hello"}}]}
    assert run["created_at"] == T0 and run["created_at"].tzinfo is not None
    assert run["finished_at"] == T0 + timedelta(seconds=2)
    assert run["latency_ms"] == 2000.5
    assert (run["prompt_tokens"], run["completion_tokens"], run["total_tokens"]) == (10, 5, 15)
    assert (run["reasoning_tokens"], run["calls"]) == (2, 2)
    assert [(c["node"], c["attempt"]) for c in run["upstream_calls"]] == [("sample", 1), ("rate", 1), ("rate", 2)]
    failed = run["upstream_calls"][2]
    assert failed["status"] == "error" and failed["error"] == "timeout"
    assert run["upstream_calls"][0]["response"]["choices"][0]["finish_reason"] == "stop"
    assert run["upstream_calls"][0]["started_at"] == T0 + timedelta(milliseconds=10)


async def test_methods_only_enqueue_and_flush_writes_everything_before_it(engine: AsyncEngine) -> None:
    recorder = SqlRecorder(engine)
    try:
        for i in range(50):
            assert recorder.run_started(a_run(f"run-{i}")) is None
            assert recorder.call(a_call(f"run-{i}")) is None
        await recorder.flush()
        assert await count(engine, RUNS) == 50
        assert await count(engine, UPSTREAM_CALLS) == 50

        recorder.run_finished("run-7", a_result("failed"))
        await recorder.flush()
        assert (await get_run(engine, "run-7"))["status"] == "failed"
        await recorder.flush()  # nothing queued: returns at once
    finally:
        await recorder.aclose()


async def test_finish_with_run_inserts_a_complete_row(engine: AsyncEngine) -> None:
    async with SqlRecorder(engine) as recorder:
        recorder.run_finished("fast-1", a_result(), run=a_run("fast-1", expression="none"))
        # also when the start was recorded (and written) earlier: the row is completed, not duplicated
        recorder.run_started(a_run("slow-1"))
        await recorder.flush()
        recorder.run_finished("slow-1", a_result(), run=a_run("slow-1"))
        await recorder.flush()
        fast = await get_run(engine, "fast-1")
        slow = await get_run(engine, "slow-1")
    assert fast is not None and slow is not None
    assert fast["expression"] == "none" and fast["status"] == "completed"
    assert fast["total_tokens"] == 15 and fast["finished_at"] == T0 + timedelta(seconds=2)
    assert slow["status"] == "completed" and slow["created_at"] == T0
    assert await count(engine, RUNS) == 2


async def test_duplicate_start_and_unknown_finish_are_harmless(engine: AsyncEngine) -> None:
    async with SqlRecorder(engine) as recorder:
        recorder.run_started(a_run("dup"))
        recorder.run_started(a_run("dup"))
        await recorder.flush()
        recorder.run_started(a_run("dup"))
        recorder.run_finished("ghost", a_result())  # no row and no run: nothing to update
        await recorder.flush()
    assert await count(engine, RUNS) == 1


async def test_a_record_that_cannot_be_encoded_is_logged_and_dropped(engine: AsyncEngine, caplog) -> None:
    async with SqlRecorder(engine) as recorder:
        with caplog.at_level(logging.ERROR, logger="optigraph.memory.recorder"):
            recorder.call(a_call("enc", request={"text": "\ud800"}))  # a lone surrogate: not UTF-8, not JSON
            recorder.run_finished("enc", a_result(), run=a_run("enc", spec={"bad": "\udfff"}))
            recorder.call(a_call("enc", offset_ms=5))
            await recorder.flush()
        assert caplog.text.count("cannot be written") == 2
        run = await get_run(engine, "enc")
        assert run is None  # its row could not be encoded
        assert await count(engine, UPSTREAM_CALLS) == 1  # the good call is written


async def test_bad_record_is_logged_and_the_rest_written(engine: AsyncEngine, caplog) -> None:
    recorder = SqlRecorder(engine)
    try:
        with caplog.at_level(logging.ERROR, logger="optigraph.memory.recorder"):
            recorder.run_started(a_run("good-1"))
            recorder.call(a_call("good-1"))
            recorder.call(a_call("good-1", node=None))  # violates NOT NULL: fails its batch
            recorder.call(a_call("good-1", offset_ms=5))
            await recorder.flush()
        assert "cannot be written" in caplog.text
        assert len((await get_run(engine, "good-1"))["upstream_calls"]) == 2

        # the writer is still alive
        recorder.run_finished("good-1", a_result())
        recorder.call(a_call("good-1", offset_ms=9))
        await recorder.flush()
        run = await get_run(engine, "good-1")
        assert run["status"] == "completed" and len(run["upstream_calls"]) == 3
    finally:
        await recorder.aclose()


async def test_unencodable_values_are_stored_as_text(engine: AsyncEngine) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    async with SqlRecorder(engine) as recorder:
        run = a_run("odd")
        run.request = {"tool": Opaque(), 3: "int key"}
        recorder.run_started(run)
        await recorder.flush()
    assert (await get_run(engine, "odd"))["request"] == {"tool": "opaque", "3": "int key"}


async def test_full_queue_drops_new_records(engine: AsyncEngine, caplog) -> None:
    recorder = SqlRecorder(engine, max_queue=2)
    with caplog.at_level(logging.WARNING, logger="optigraph.memory.recorder"):
        for i in range(3):
            recorder.run_started(a_run(f"q-{i}"))
    await recorder.aclose()
    assert "queue full" in caplog.text
    assert await count(engine, RUNS) == 2


async def test_records_queued_after_close_are_written_by_flush(engine: AsyncEngine) -> None:
    recorder = SqlRecorder(engine)
    recorder.start()
    await recorder.aclose()
    recorder.run_started(a_run("late"))
    await recorder.flush()
    assert await get_run(engine, "late") is not None


async def test_page_runs_filters_and_pages(engine: AsyncEngine) -> None:
    async with SqlRecorder(engine) as recorder:
        for i in range(6):
            run = a_run(f"r{i}", created_at=T0 + timedelta(seconds=i), expression="bon" if i % 2 else "moa")
            recorder.run_started(run)
            if i < 4:
                recorder.run_finished(run.id, a_result())
        recorder.call(a_call("r1"))
        await recorder.flush()

    async def ids(**filters: Any) -> list[str]:
        return [r["id"] for r in (await page_runs(engine, **filters)).runs]

    page = await page_runs(engine)
    assert [r["id"] for r in page.runs] == ["r5", "r4", "r3", "r2", "r1", "r0"] and not page.has_more
    assert "upstream_calls" not in page.runs[0] and "request" not in page.runs[0]  # no bodies unless asked
    assert "request" in (await page_runs(engine, bodies=True)).runs[0]
    assert (page.runs[0]["calls"], page.runs[4]["calls"]) == (0, 2)  # the column: a count, set at finish
    assert await ids(status="running") == ["r5", "r4"]
    assert await ids(expression="bon", status="completed") == ["r3", "r1"]
    assert await ids(model="other") == []

    page1 = await page_runs(engine, limit=4)
    assert page1.has_more and page1.next_cursor == "r2"
    page2 = await page_runs(engine, limit=4, after=page1.next_cursor)
    assert [r["id"] for r in page1.runs + page2.runs] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert not page2.has_more and page2.next_cursor is None
    assert await ids(created_before=T0 + timedelta(seconds=2)) == ["r1", "r0"]
    assert await ids(created_after=T0 + timedelta(seconds=3)) == ["r5", "r4"]
    with pytest.raises(InvalidRequest, match="unknown cursor"):
        await page_runs(engine, after="unknown")
    assert await get_run(engine, "unknown") is None


async def test_enqueue_is_cheap_and_batches_accumulate(engine: AsyncEngine) -> None:
    recorder = SqlRecorder(engine, max_batch=100)
    try:
        for i in range(250):  # queued with no await in between: the writer sees them in batches
            recorder.call(a_call("bulk", offset_ms=i))
        assert len(recorder._queue) == 250
        await recorder.flush()
        run_calls = await count(engine, UPSTREAM_CALLS)
        assert run_calls == 250
    finally:
        await recorder.aclose()


async def _write_all(url: str, *, plain: bool, store_prompts: bool = True) -> dict[str, list[tuple]]:
    """Every kind of batch the recorder writes, through the plain-SQL path or SQLAlchemy's."""
    import sqlite3

    from optigraph.memory.migrate import upgrade_schema

    upgrade_schema(url)
    db = open_database(url)
    recorder = SqlRecorder(db, store_prompts=store_prompts, plain_sqlite=plain)
    assert (recorder._file is not None) == plain  # SQLAlchemy's statements through the engine, as on PostgreSQL
    recorder.start()
    recorder.call(a_call("a"))
    recorder.call(a_call("b", error="boom", status="error"))
    east = timezone(timedelta(hours=2))  # stored as UTC
    recorder.call(a_call("c", started_at=datetime(2025, 1, 2, 5, 4, 5, tzinfo=east), request=None, response=None))
    odd = {"messages": [], 7: "a key that is not a string", "when": T0, "blob": BLOB, "text": "ü\u2028"}
    recorder.call(a_call("d", started_at=datetime(2025, 1, 2, 3, 4, 5), request=odd))  # naive: taken as UTC
    recorder.call(a_call("e", started_at=datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)))  # a year of three digits
    recorder.call(a_call("f", error="", status="error"))  # empty and zero-like texts are not NULL
    recorder.call(a_call("g", error="0", status="error"))
    recorder.run_finished("a", a_result(), run=a_run("a", user="ü"))  # started and finished in one batch
    recorder.run_started(a_run("b", checkpointed=True, spec={"route": "m"}))
    recorder.run_started(a_run("c", parent_id="0", user="", tenant="t"))
    recorder.run_finished("c", a_result("failed"))  # finished in the batch that started it
    recorder.run_finished("c", a_result())  # and again: the last one stands
    for i in range(45):  # many rows of one statement in one batch (an INSERT takes up to 32 at once)
        recorder.call(a_call(f"many-{i:02d}", offset_ms=i))
        if i < 37:
            recorder.run_finished(f"many-{i:02d}", a_result(), run=a_run(f"many-{i:02d}"))
    await recorder.flush()
    recorder.run_finished(
        "b", RunResult(status="failed", finished_at=T0, latency_ms=1.0, usage=None, error={"message": "x"})
    )
    await recorder.aclose()
    await db.dispose()
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # the stored bytes, not what SQLAlchemy reads back
        return {t: list(conn.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in ("runs", "upstream_calls")}


async def test_the_plain_sql_path_stores_exactly_what_sqlalchemy_stores(tmp_path) -> None:
    plain = await _write_all(f"sqlite:///{tmp_path / 'plain.db'}", plain=True)
    through = await _write_all(f"sqlite:///{tmp_path / 'sqlalchemy.db'}", plain=False)
    created = [row for row in plain["runs"] if row[0] == "a"][0]
    assert len(plain["runs"]) == 40 and len(plain["upstream_calls"]) == 52
    many = [row[1] for row in plain["upstream_calls"] if row[1].startswith("many-")]
    assert many == [f"many-{i:02d}" for i in range(45)]  # written in the order recorded (their ids)
    assert "2025-01-02 03:04:05.678000" in created  # the timestamp in SQLite's text form, in UTC
    with sqlite3.connect(tmp_path / "plain.db") as conn:
        stored = conn.execute('SELECT parent_id, "user", tenant, status FROM runs WHERE id = ?', ("c",)).fetchone()
        errors = conn.execute("SELECT run_id, error FROM upstream_calls WHERE run_id IN ('a', 'f', 'g')").fetchall()
    assert stored == ("0", "", "t", "completed")
    assert sorted(errors) == [("a", None), ("f", ""), ("g", "0")]
    assert plain == through


async def test_without_stored_prompts_both_paths_store_the_same_metadata(tmp_path) -> None:
    plain = await _write_all(f"sqlite:///{tmp_path / 'plain.db'}", plain=True, store_prompts=False)
    through = await _write_all(f"sqlite:///{tmp_path / 'sqlalchemy.db'}", plain=False, store_prompts=False)
    assert plain == through
    assert not any("hello" in str(row) or "'hi'" in str(row) for rows in plain.values() for row in rows)


async def test_queued_records_hold_nothing_the_garbage_collector_tracks(engine: AsyncEngine) -> None:
    import gc

    recorder = SqlRecorder(engine)
    await recorder.aclose()  # closed: records wait in the queue until flushed
    odd = {"messages": [{"role": "user", "content": "hi"}], 7: "not a string key", "when": T0}
    recorder.call(a_call("q", request=odd))
    recorder.run_started(a_run("q", spec={"route": "m", "list": [1, {"a": None}]}))
    recorder.run_finished("q", a_result(), run=a_run("q"))
    assert len(recorder._queue) == 3
    gc.collect()
    gc.collect()  # a tuple is untracked once a collection finds only untracked values in it
    rows = [field for item in recorder._queue for field in item if isinstance(field, tuple)]
    assert len(rows) == 4 and not any(gc.is_tracked(row) for row in rows)  # never walked by a collection
    await recorder.flush()
    run = await get_run(engine, "q")
    assert run is not None and run["status"] == "completed" and run["spec"] == {"route": "m", "list": [1, {"a": None}]}
    assert run["upstream_calls"][0]["request"]["7"] == "not a string key"  # the same documents as before
    assert run["response"] == a_result().response


def test_the_recorders_sqlite_connections_keep_statement_journals_in_memory(tmp_path) -> None:
    from optigraph.memory.migrate import upgrade_schema

    url = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade_schema(url)
    db = open_database(url)
    recorder = SqlRecorder(db)
    assert recorder._file is not None
    raw = recorder._file.raw_connection()
    try:  # 2: MEMORY (a multi-row INSERT's journal would otherwise spill to a temporary file)
        assert raw.cursor().execute("PRAGMA temp_store").fetchone()[0] == 2
    finally:
        raw.close()
        recorder._file.dispose()
