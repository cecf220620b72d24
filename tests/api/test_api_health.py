"""GET /health on real servers: the database (503 when its SQLite file is gone or replaced), each
backend from its own recent calls (a failed upstream's last error), and the local model's loading."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import Stack, closed_port_url, start_stack
from upstream import ServerThread, make_app

from optigraph.api.app import create_app
from optigraph.config import Settings

HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def health(stack_or_url: Stack | str) -> httpx.Response:
    url = stack_or_url if isinstance(stack_or_url, str) else stack_or_url.url
    return httpx.get(url + "/health", timeout=30)


def test_health_reports_the_database_and_the_upstream(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db") as s:
        before = health(s)
        assert before.status_code == 200, before.text
        body = before.json()
        assert body["status"] == "ok" and body["database"] == {"ok": True, "error": None}
        assert body["backends"]["openai"]["base_url"] == s.settings.base_url
        assert body["backends"]["openai"]["reachable"] is None  # no call yet, and none sent for the check
        assert not s.log.bodies
        with s.http() as http:
            assert http.post("/v1/chat/completions", json=HELLO).status_code == 200
        openai_backend = health(s).json()["backends"]["openai"]
        assert openai_backend["reachable"] is True and openai_backend["last_ok_at"]
        assert openai_backend["last_error"] is None


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_an_unusable_sqlite_file_is_a_503(tmp_path: Path, how: str) -> None:
    db = tmp_path / "data" / "o.db"
    with start_stack(db) as s:
        assert health(s).status_code == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            db.write_bytes(b"this is not a database" * 100)
        resp = health(s)
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["status"] == "error" and body["database"]["ok"] is False
        assert ("unable to open" if how == "removed" else "not a database") in body["database"]["error"]
        assert not db.exists() or how == "replaced"  # the check did not create the file again


def test_a_dropped_postgresql_database_is_a_503(postgres_url: str) -> None:
    import psycopg

    name = f"health_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    with (
        ServerThread(make_app()) as up,
        ServerThread(create_app(Settings(base_url=up.url + "/v1", db_url=db_url))) as server,
    ):
        assert health(server.url).status_code == 200
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # the pool's connections end with it
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        resp = health(server.url)
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["status"] == "error" and f'"{name}" does not exist' in body["database"]["error"]


def test_a_failed_upstream_reports_its_last_error(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db", base_url=closed_port_url(), upstream_retries=0) as s:
        with s.http() as http:
            assert http.post("/v1/chat/completions", json=HELLO).status_code == 502
        resp = health(s)
    assert resp.status_code == 200  # the server itself works: it says what failed
    body = resp.json()
    backend = body["backends"]["openai"]
    assert body["status"] == "degraded" and backend["reachable"] is False
    assert "unreachable" in backend["last_error"] and backend["last_error_at"] and backend["last_ok_at"] is None


def test_health_says_loading_while_the_local_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_load(source: Any, dtype: str) -> Any:  # a load that ends when the test says so
        release.wait(60)
        raise RuntimeError("weights unreadable")

    monkeypatch.setattr("optigraph.local.cache.load_model", slow_load)
    with ServerThread(create_app(Settings(db_url=f"sqlite:///{tmp_path / 'o.db'}"))) as server:
        loading = health(server.url).json()
        release.set()
        deadline = time.monotonic() + 60
        while not (after := health(server.url).json())["local_model"].startswith("failed"):
            if time.monotonic() > deadline:  # a hang guard, not a timing check
                raise AssertionError(f"the failed load was never reported: {after}")
            time.sleep(0.05)
    assert loading["status"] == "loading" and loading["local_model"] in ("not loaded", "loading")
    assert "openai" not in loading["backends"]
    assert after["status"] == "degraded" and "weights unreadable" in after["local_model"]
