"""Retention: a tenant deletes a run (DELETE /v1/runs/{id}), `optigraph runs prune` and the retention
task delete runs past an age with their calls, checkpoints and memory, and `store_prompts=False`
keeps runs as metadata only: no prompt or answer text anywhere in the database file."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, last_user_text, start_stack
from upstream import HTTPFailure, echo_responder

from optigraph.api.retention import RetentionTask
from optigraph.cli import main
from optigraph.memory.db import open_database
from optigraph.memory.records import NullRecorder, utcnow

GRAPH = "none&none-fake-model"
SECRET_TEXT = "zebra-crossing-4217"


def count(db_path: Path, table: str, run_id: str) -> int:
    column = "run_id" if table in ("upstream_calls", "memory_chunks") else "thread_id"
    if table == "runs":
        column = "id"
    con = sqlite3.connect(db_path, timeout=5)
    try:
        return con.execute(
            f"SELECT count(*) FROM {table} WHERE {column} = ? OR {column} LIKE ?", (run_id, run_id + ".%")
        ).fetchone()[0]
    finally:
        con.close()


def stored_everywhere(db_path: Path, run_id: str) -> dict[str, int]:
    return {t: count(db_path, t, run_id) for t in ("runs", "upstream_calls", "checkpoints", "writes")}


def chat(stack: Stack, model: str, text: str, **extra: Any) -> str:
    with stack.http() as http:
        r = http.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": text}], **extra}
        )
    run_id = r.headers["x-optigraph-run-id"]
    stack.run(run_id)
    return run_id


def test_a_tenant_deletes_its_run_with_everything_stored_for_it(tmp_path: Path) -> None:
    with start_stack(tmp_path / "d.db", default_model="fake-model") as s:
        run_id = chat(s, GRAPH, "delete me")
        assert all(stored_everywhere(s.db_path, run_id).values())
        with s.http() as http:
            r = http.delete(f"/v1/runs/{run_id}")
            assert r.status_code == 200 and r.json()["deleted"] is True
            assert http.delete(f"/v1/runs/{run_id}").status_code == 404
        assert stored_everywhere(s.db_path, run_id) == dict.fromkeys(
            ("runs", "upstream_calls", "checkpoints", "writes"), 0
        )


def test_prune_deletes_runs_past_an_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_path = tmp_path / "p.db"
    with start_stack(db_path, default_model="fake-model") as s:
        old, passthrough = chat(s, GRAPH, "old"), chat(s, "fake-model", "old too")
    db_url = f"sqlite:///{db_path}"
    with pytest.raises(SystemExit) as done:
        main(["runs", "prune", "--older-than", "1", "--db-url", db_url])
    assert done.value.code == 0 and "deleted 0 runs" in capsys.readouterr().out
    assert all(stored_everywhere(db_path, old).values())
    with pytest.raises(SystemExit) as done:
        main(["runs", "prune", "--older-than", "0", "--db-url", db_url])
    assert done.value.code == 0 and "deleted 2 runs" in capsys.readouterr().out
    for run_id in (old, passthrough):
        assert not any(stored_everywhere(db_path, run_id).values())


def test_the_retention_task_prunes_with_its_clock(tmp_path: Path) -> None:
    with start_stack(tmp_path / "r.db", default_model="fake-model") as s:
        run_id = chat(s, GRAPH, "kept a while")

        async def prune(days_later: float) -> int:
            db = open_database(f"sqlite:///{s.db_path}")
            task = RetentionTask(
                db, NullRecorder(), max_age_days=7, clock=lambda: utcnow() + timedelta(days=days_later)
            )
            try:
                return await task.prune_once()
            finally:
                await db.dispose()

        assert asyncio.run(prune(6)) == 0 and count(s.db_path, "runs", run_id) == 1
        assert asyncio.run(prune(8)) == 1
        assert not any(stored_everywhere(s.db_path, run_id).values())


def test_without_stored_prompts_runs_are_metadata_only(tmp_path: Path) -> None:
    db_path = tmp_path / "m.db"

    def stage_two_down(body: dict[str, Any], i: int) -> Any:
        if last_user_text(body) == f"echo: {SECRET_TEXT} fails":
            return HTTPFailure(400, "stage two is down")
        return echo_responder(body, i)

    with start_stack(db_path, default_model="fake-model", store_prompts=False) as s:
        runs = [
            chat(s, model, SECRET_TEXT, stream=stream) for model in ("fake-model", GRAPH) for stream in (False, True)
        ]
        s.script.fn = stage_two_down
        failed = chat(s, GRAPH, f"{SECRET_TEXT} fails")
        with s.http() as http:
            shown = http.get(f"/v1/runs/{runs[2]}").json()
            assert shown["status"] == "completed" and shown["usage"]["total_tokens"] > 0
            assert shown["checkpointed"] is False and shown["request"]["message_count"] == 1
            r = http.post(f"/v1/runs/{failed}/resume")
            assert r.status_code == 409 and "without its prompts" in r.json()["error"]["message"]
            memory = {
                "model": "memory&none-fake-model",
                "messages": [{"role": "user", "content": "x"}],
                "optillm_params": {"memory": {"conversation": "c1"}},
            }
            assert http.post("/v1/chat/completions", json=memory).status_code == 400
    assert s.run(failed)["status"] == "failed"
    assert all(count(db_path, "runs", r) == 1 for r in runs)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("m.db*"))
    assert SECRET_TEXT.encode() not in stored and b"zebra" not in stored
