"""`optigraph serve --workers 2`: two processes behind one port on one SQLite file. Requests are served
by both (their pids differ in /health), every run is recorded, a worker that dies is started again, and
SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
from upstream import ServerThread, make_app, serve_process

WAIT_S = 60  # hang guards for a loaded machine; nothing asserts how long anything took


async def pids_seen(url: str, *, rounds: int) -> set[int]:
    """The pids /health reports over bursts of concurrent requests, each on its own connection."""
    seen: set[int] = set()

    async def one() -> int:
        async with httpx.AsyncClient(timeout=30) as client:  # a new connection: any worker may accept it
            r = await client.get(url + "/health")
            assert r.status_code == 200, r.text
            return r.json()["pid"]

    for _ in range(rounds):
        seen |= set(await asyncio.gather(*(one() for _ in range(8))))
        if len(seen) >= 2:
            break
    return seen


def child_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return {int(p) for p in children.read_text().split()}


def stored_runs(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db, timeout=10)
    try:
        return dict(con.execute("SELECT id, status FROM runs").fetchall())
    finally:
        con.close()


async def send_chats(url: str, count: int) -> list[str]:
    async def one(i: int) -> str:
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(
                url + "/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == f"echo: q{i}"
            return r.headers["x-optigraph-run-id"]

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_two_workers_share_the_port_and_the_database(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    with ServerThread(make_app()) as up:
        proc, url = serve_process(db, up.url, "--workers", "2")
        try:
            workers = child_pids(proc.pid)
            assert len(workers) == 2
            seen = asyncio.run(pids_seen(url, rounds=200))
            assert seen == workers  # both workers answered, and only they did

            run_ids = asyncio.run(send_chats(url, 24))
            assert len(set(run_ids)) == 24
            deadline = time.monotonic() + WAIT_S
            while True:  # each worker's recorder writes in the background
                runs = stored_runs(db)
                if all(runs.get(r) == "completed" for r in run_ids) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert all(runs.get(r) == "completed" for r in run_ids), runs

            # A worker that dies is started again, and the port keeps answering meanwhile.
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + WAIT_S
            while True:
                now = child_pids(proc.pid)
                if len(now) == 2 and victim not in now or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert len(now) == 2 and victim not in now, now
            assert asyncio.run(send_chats(url, 4))
            seen = asyncio.run(pids_seen(url, rounds=200))
            assert seen == now
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, out.decode()
