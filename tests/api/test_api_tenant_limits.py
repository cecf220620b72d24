"""Per-tenant limits across replicas: two optigraph servers on one PostgreSQL database count the same
tenant's requests per minute, runs in flight and upstream tokens per day; over a limit is a 429 with
`Retry-After`. Both servers' limit clocks are set by the test (no waiting on the real minute)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from blocking_upstream import Gate, make_gated_app
from upstream import ServerThread

from optigraph.api.app import create_app
from optigraph.config import Settings
from optigraph.memory.db import open_database
from optigraph.memory.keys import create_key
from optigraph.memory.limits import set_tenant_limits
from optigraph.memory.migrate import upgrade_schema


def on_db(db_url: str, work: Any) -> Any:
    async def run() -> Any:
        db = open_database(db_url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def key_for(db_url: str, name: str, tenant: str, **limits: int) -> str:
    return on_db(db_url, lambda db: create_key(db, name=name, tenant=tenant, scopes=["chat", "runs:read"], **limits))[1]


def chat(server: ServerThread, key: str, text: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def stored(server: ServerThread, key: str, run_id: str) -> dict[str, Any]:
    """The run once the server has written it (the recorder writes in the background)."""
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        for _ in range(600):
            r = http.get(f"/v1/runs/{run_id}")
            if r.status_code == 200 and r.json()["status"] == "completed":
                return r.json()
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} was not stored")


def refused(response: httpx.Response, code: str) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code
    return int(response.headers["retry-after"])


def test_limits_hold_across_two_servers_on_one_postgresql(postgres_url: str) -> None:
    upgrade_schema(postgres_url)
    rate = key_for(postgres_url, "rate", "team-rate")
    busy = key_for(postgres_url, "busy", "team-busy")
    spender = key_for(postgres_url, "spender", "team-spend", tokens_per_day=5)  # a key's own limit
    on_db(postgres_url, lambda db: set_tenant_limits(db, "team-busy", rpm=0, concurrent_runs=1))
    # The servers' limit clock, fixed by the test. Runs are created at the real time, after it: the
    # day's token count (runs created since this clock's midnight) includes them.
    now = [datetime(2026, 1, 1, 12, 0, 15, tzinfo=UTC)]
    gate = Gate(prompt="hold me")
    with ServerThread(make_gated_app(gate)) as up:
        settings = Settings(
            base_url=up.url + "/v1", db_url=postgres_url, default_model="fake-model", access_cache_s=0, tenant_rpm=3
        )
        with ServerThread(create_app(settings)) as a, ServerThread(create_app(settings)) as b:
            for server in (a, b):
                server.server.config.app.state.run_slots.clock = lambda: now[0]

            # requests per minute: three across both servers, then the fourth is refused on either
            assert [chat(s, rate, "hi").status_code for s in (a, b, a)] == [200, 200, 200]
            assert refused(chat(b, rate, "hi"), "rate_limit_exceeded") == 45  # the minute ends in 45 s
            assert refused(chat(a, rate, "hi"), "rate_limit_exceeded") == 45
            now[0] += timedelta(minutes=1)
            assert chat(b, rate, "hi").status_code == 200  # a new minute

            # concurrent runs: team-busy may have one in flight, wherever it runs
            held: dict[str, httpx.Response] = {}
            first = threading.Thread(target=lambda: held.update(r=chat(a, busy, "hold me")))
            first.start()
            assert gate.received.wait(60)
            assert refused(chat(b, busy, "hi"), "concurrent_runs_exceeded") == 1
            assert refused(chat(a, busy, "hi"), "concurrent_runs_exceeded") == 1
            assert chat(b, rate, "hi").status_code == 200  # another tenant is not held up
            gate.release.set()
            first.join(60)
            assert held["r"].status_code == 200
            assert chat(b, busy, "hi").status_code == 200  # the slot was freed when the run ended

            # upstream tokens per day: the spender key's first run uses 7 tokens of its 5
            r = chat(a, spender, "one two three")
            assert r.status_code == 200
            assert stored(a, spender, r.headers["x-optigraph-run-id"])["usage"]["total_tokens"] == 7
            wait = refused(chat(b, spender, "again"), "tokens_per_day_exceeded")
            assert wait == 11 * 3600 + 58 * 60 + 45  # to the clock's midnight (UTC), from 12:01:15
            other = key_for(postgres_url, "other", "team-spend")  # the tenant's other key has no token limit
            assert chat(b, other, "again").status_code == 200
