"""Runs and their upstream calls are stored in SQLite and survive a server restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_stack import start_stack
from upstream import ServerThread, make_app

from optigraph.memory.db import open_database
from optigraph.memory.queries import get_run, page_runs

HELLO = [{"role": "user", "content": "hello there"}]
REQUESTS = [  # (model, stream, upstream calls)
    ("fake-model", False, 1),
    ("fake-model", True, 1),
    ("none|none-fake-model", False, 2),
    ("none&none-fake-model", True, 2),
]


async def test_runs_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with ServerThread(make_app(reasoning_tokens=2)) as upstream:
        served, after_id = await serve_twice(db, upstream.url + "/v1")
    engine = open_database(f"sqlite:///{db}")
    try:
        for run_id, expression, usage, calls in served:
            run = await get_run(engine, run_id)
            assert run is not None, run_id
            assert run["status"] == "completed" and run["error"] is None
            assert run["expression"] == expression and run["model"] == "fake-model"
            assert run["request"]["messages"] == HELLO
            assert run["created_at"] is not None and run["finished_at"] >= run["created_at"]
            assert run["latency_ms"] > 0
            assert (run["prompt_tokens"], run["completion_tokens"], run["total_tokens"]) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["total_tokens"],
            )
            assert run["reasoning_tokens"] == 2 * calls == usage["completion_tokens_details"]["reasoning_tokens"]
            assert run["calls"] == calls
            rows = run["upstream_calls"]
            assert len(rows) == calls  # one row per upstream call
            for row in rows:
                assert row["status"] == "ok" and row["error"] is None and row["attempt"] == 1
                assert row["backend"] == "openai" and row["model"] == "fake-model"
                assert row["node"] and row["latency_ms"] > 0 and row["started_at"] is not None
                assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["reasoning_tokens"] == 2
                assert row["request"]["model"] == "fake-model"
            assert sum(r["prompt_tokens"] for r in rows) == usage["prompt_tokens"]
            assert sum(r["completion_tokens"] for r in rows) == usage["completion_tokens"]
            if expression == "none":
                assert [r["node"] for r in rows] == ["passthrough"]
                assert not run["checkpointed"]
            else:
                assert run["checkpointed"]
        listed = (await page_runs(engine, limit=10)).runs
        assert {r["id"] for r in listed} == {s[0] for s in served} | {after_id}
    finally:
        await engine.dispose()


async def serve_twice(db: Path, base_url: str) -> tuple[list[tuple[str, str, dict, int]], str]:
    """Serves REQUESTS on one server, stops it, then one more request on a new server on the same file."""
    served: list[tuple[str, str, dict, int]] = []  # run id, expression, usage, calls
    with start_stack(db, base_url=base_url) as first:
        async with first.aclient() as client:
            for model, stream, calls in REQUESTS:
                if stream:
                    chunks = [
                        c
                        async for c in await client.chat.completions.create(
                            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
                        )
                    ]
                    last = chunks[-1]
                else:
                    last = await client.chat.completions.create(model=model, messages=HELLO, max_tokens=50)
                ext = last.model_extra["optigraph"]
                assert ext["upstream_calls"] == calls
                served.append((ext["run_id"], ext["approach"], last.usage.model_dump(), calls))
    # a new server on the same file (it upgrades the schema at start)
    with start_stack(db, base_url=base_url) as second:
        after = second.client().chat.completions.create(model="fake-model", messages=HELLO)
        second.run(after.model_extra["optigraph"]["run_id"])
    return served, after.model_extra["optigraph"]["run_id"]


@pytest.mark.parametrize("stream", [False, True])
def test_request_and_response_are_stored(tmp_path: Path, stream: bool) -> None:
    with start_stack(tmp_path / "o.db") as s:
        extra = {"my_vendor_field": 1}
        if stream:
            with s.client().chat.completions.with_streaming_response.create(
                model="fake-model", messages=HELLO, stream=True, extra_body=extra
            ) as resp:
                run_id = resp.headers["x-optigraph-run-id"]
                list(resp.parse())
        else:
            raw = s.client().chat.completions.with_raw_response.create(
                model="fake-model", messages=HELLO, extra_body=extra
            )
            run_id = raw.headers["x-optigraph-run-id"]
        run = s.run(run_id)
        assert run["request"]["my_vendor_field"] == 1 and run["request"]["model"] == "fake-model"
        assert run["response"] is not None
        (call,) = s.calls(run_id)
        assert call["request"]["my_vendor_field"] == 1
        assert call["response"]["choices"][0]["text"] == "echo: hello there"
