"""The crash case for real: a server process is killed with SIGKILL while a run waits on its third
upstream call, restarted on the same database, and the run resumed: the calls that had finished
are not sent again, and are recorded once."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from api_stack import last_user_text
from upstream import ServerThread, UpstreamLog, echo_responder, free_port, make_app, serve_process


def start_server(db: Path, port: int, upstream_url: str) -> subprocess.Popen:
    return serve_process(db, upstream_url, port=port)[0]


def rows(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    con = sqlite3.connect(db, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args).fetchall()]
    finally:
        con.close()


def test_a_run_killed_with_sigkill_is_resumed_without_repeating_finished_calls(tmp_path: Path) -> None:
    arrived, release = threading.Event(), threading.Event()
    blocking = {"on": True}

    def blocks_stage_three(body: dict[str, Any], index: int) -> Any:
        if blocking["on"] and last_user_text(body) == "echo: echo: crash":
            arrived.set()
            release.wait(30)  # holds the call until the server is dead
        return echo_responder(body, index)

    log = UpstreamLog()
    db = tmp_path / "x.db"
    port = free_port()
    with ServerThread(make_app(blocks_stage_three, log=log)) as up:
        proc = start_server(db, port, up.url)
        url = f"http://127.0.0.1:{port}"
        worker = threading.Thread(target=lambda: _post_ignoring_errors(url), daemon=True)
        try:
            worker.start()
            assert arrived.wait(30), "stage three never reached the upstream"
            # The first two calls are recorded (in the background) before the kill.
            deadline = time.monotonic() + 30
            while len(rows(db, "SELECT id FROM upstream_calls")) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            blocking["on"] = False
            release.set()
        worker.join(timeout=10)

        runs = rows(db, "SELECT id, status FROM runs")
        assert len(runs) == 1 and runs[0]["status"] == "running"  # left as it was by the crash
        run_id = runs[0]["id"]
        before = [last_user_text(b) for b in log.bodies]
        assert before == ["crash", "echo: crash", "echo: echo: crash"]

        proc = start_server(db, port, up.url)
        try:
            listed = httpx.get(url + "/v1/runs", params={"status": "running"}, timeout=10).json()
            assert [r["id"] for r in listed["data"]] == [run_id]
            r = httpx.post(f"{url}/v1/runs/{run_id}/resume", timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["choices"][0]["message"]["content"] == "echo: echo: echo: crash"
            assert body["optigraph"]["run_id"] == run_id and body["optigraph"]["upstream_calls"] == 3
            # Only the interrupted call was sent again.
            after = [last_user_text(b) for b in log.bodies[len(before) :]]
            assert after == ["echo: echo: crash"]
            r = httpx.post(f"{url}/v1/runs/{run_id}/resume", timeout=30)
            assert r.status_code == 409  # completed now
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    run = rows(db, "SELECT status, response FROM runs WHERE id = ?", run_id)[0]
    assert run["status"] == "completed"
    assert json.loads(run["response"])["choices"][0]["message"]["content"] == "echo: echo: echo: crash"
    calls = [
        last_user_text(json.loads(c["request"]))
        for c in rows(db, "SELECT request FROM upstream_calls WHERE run_id = ? ORDER BY id", run_id)
    ]
    assert calls.count("crash") == 1 and calls.count("echo: crash") == 1  # the pre-crash calls, once each
    assert calls[-1] == "echo: echo: crash"


def _post_ignoring_errors(url: str) -> None:
    try:
        httpx.post(
            url + "/v1/chat/completions",
            timeout=30,
            json={"model": "none&none&none-fake-model", "messages": [{"role": "user", "content": "crash"}]},
        )
    except httpx.HTTPError:
        pass  # the server dies under it
