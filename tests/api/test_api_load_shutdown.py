"""64 clients in flight on a real `optigraph serve` process whose upstream holds every call: half of
the clients hang up, then the server is shut down while the other half still wait. Nothing is lost:
every one of the 64 runs is stored, the abandoned ones `cancelled`, the others `interrupted` (their
clients got a 503 `server_shutting_down`), none left `running`, every upstream call recorded; and the
checkpointed ones resume to completion once the upstream answers again."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from api_stack import start_stack
from fault_upstream import FaultUpstream
from upstream import serve_process

CLIENTS = 64
WAIT_S = 60  # hang guards for a loaded machine; nothing asserts how long anything took


def wait_for(what: str, done: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:  # a hang guard, not a measure
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def request(i: int) -> dict[str, Any]:
    """Four kinds of request in turn: passthrough and a checkpointed pipeline, streamed or not."""
    model = "fake-model" if i % 4 < 2 else "none&none-fake-model"
    return {"model": model, "stream": i % 2 == 1, "messages": [{"role": "user", "content": f"hang {i}"}]}


async def clients(url: str, up: FaultUpstream, proc: Any) -> dict[int, httpx.Response]:
    """Sends the 64 requests; cancels the even-numbered ones once all are held upstream, then (once
    the server has abandoned their upstream calls) sends SIGTERM. The odd ones' responses."""
    limits = httpx.Limits(max_connections=CLIENTS * 2)
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S, limits=limits) as http:
        tasks = {i: asyncio.create_task(http.post("/v1/chat/completions", json=request(i))) for i in range(CLIENTS)}
        await asyncio.to_thread(wait_for, "all 64 calls held upstream", lambda: len(up.seen) >= CLIENTS)
        for i in range(0, CLIENTS, 2):
            tasks[i].cancel()  # the client hangs up: its connection is closed
        await asyncio.gather(*(tasks[i] for i in range(0, CLIENTS, 2)), return_exceptions=True)
        # the server cancels those runs, which abandons their upstream calls
        await asyncio.to_thread(wait_for, "32 upstream calls abandoned", lambda: up.hung_up >= CLIENTS // 2)
        proc.send_signal(signal.SIGTERM)
        return {i: await tasks[i] for i in range(1, CLIENTS, 2)}


def stored_runs(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(
            "SELECT r.id, r.status, r.expression, r.calls, "
            "(SELECT count(*) FROM upstream_calls c WHERE c.run_id = r.id) AS call_rows FROM runs r"
        ).fetchall()
    finally:
        con.close()


def test_64_clients_disconnect_half_and_shut_down_nothing_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    with FaultUpstream() as up:
        proc, url = serve_process(db, up.url, "--shutdown-grace", "1", wait_s=WAIT_S)
        try:
            answered = asyncio.run(clients(url, up, proc))
            code = proc.wait(timeout=WAIT_S)
            output = proc.stdout.read().decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0 and "Traceback" not in output, output

        for i, resp in answered.items():
            assert resp.status_code == 503, (i, resp.text)
            assert resp.json()["error"]["code"] == "server_shutting_down"
        interrupted_ids = {resp.headers["x-optigraph-run-id"] for resp in answered.values()}

        runs = stored_runs(db)
        assert len(runs) == CLIENTS
        statuses = {r["id"]: r["status"] for r in runs}
        assert "running" not in statuses.values()
        assert sorted(statuses.values()) == ["cancelled"] * 32 + ["interrupted"] * 32
        assert {i for i, s in statuses.items() if s == "interrupted"} == interrupted_ids
        assert all(r["calls"] == 1 and r["call_rows"] == 1 for r in runs)  # each held call is recorded
        assert up.hung_up == CLIENTS

        up.healed = True  # back up on the same database: the checkpointed runs resume
        checkpointed = [r["id"] for r in runs if r["expression"] != "none"]
        assert len(checkpointed) == CLIENTS // 2
        with start_stack(db, base_url=up.url + "/v1", default_model="fake-model") as stack, stack.http() as http:
            for run_id in checkpointed:
                r = http.post(f"/v1/runs/{run_id}/resume")
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"].startswith("echo: echo: hang ")
                assert stack.run(run_id)["status"] == "completed"
