"""The service endpoints (/v1/models, /health, OpenAPI docs) and the `optigraph serve` process:
it answers /health soon after start and exits cleanly on SIGTERM, finishing in-flight requests."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_stack import Stack, start_stack
from upstream import ServerThread, UpstreamLog, make_app, serve_process


def test_models_lists_the_upstream_models(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db", upstream={"model_ids": ("fake-model", "other-model")}) as s:
        models = s.client().models.list()
        ids = [m.id for m in models]
        assert ids[:2] == ["fake-model", "other-model"]
        assert s.settings.local_model not in ids  # clients cannot use it beside an upstream (unless enabled)
        assert all(m.object == "model" for m in models)
        with s.http() as http:
            body = http.get("/v1/models").json()
        assert body["object"] == "list"
        assert {"none", "bon", "moa"} <= {a["id"] for a in body["approaches"]}


def test_health(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    assert resp.json()["database"] == {"ok": True, "error": None}  # more in test_api_health.py


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_this_server(stack: Stack, page: str) -> None:
    with stack.http() as http:
        html = http.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
        urls += re.findall(r"""url:\s*["']([^"']+)["']""", html.text)  # Swagger UI's spec URL
        urls += re.findall(r"""spec-url=["']([^"']+)["']""", html.text)  # ReDoc's
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls  # no CDN
        kinds = {}
        for url in urls:
            resp = http.get(url)
            assert resp.status_code == 200, url
            kinds[url.rsplit(".", 1)[-1]] = resp.headers["content-type"]
    assert "javascript" in kinds["js"] and "/openapi.json" in urls
    if page == "/docs":
        assert "css" in kinds["css"]


def test_openapi_and_docs(stack: Stack) -> None:
    with stack.http() as http:
        spec = http.get("/openapi.json").json()
        docs = http.get("/docs")
    schema = spec["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages", "n", "stream", "optillm_approach", "optillm_params"} <= set(schema["properties"])
    assert set(schema["required"]) == {"model", "messages"}
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ChatCompletionRequest"
    assert {"/v1/models", "/health"} <= set(spec["paths"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# ---- the server process ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[tuple[ServerThread, UpstreamLog]]:
    log = UpstreamLog()
    with ServerThread(make_app(latency=0.8, log=log)) as up:
        yield up, log


def start_server(tmp_path: Path, upstream_url: str) -> tuple[subprocess.Popen, str]:
    return serve_process(tmp_path / "o.db", upstream_url)


def test_sigterm_stops_the_server_cleanly(tmp_path: Path, slow_upstream: tuple[ServerThread, UpstreamLog]) -> None:
    up, log = slow_upstream
    proc, url = start_server(tmp_path, up.url)
    try:
        # a request in flight when SIGTERM arrives is still answered
        result: dict = {}

        def request() -> None:
            result["resp"] = httpx.post(
                url + "/v1/chat/completions",
                timeout=10,
                json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
            )

        worker = threading.Thread(target=request)
        worker.start()
        deadline = time.monotonic() + 30
        while not log.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.in_flight, "the request did not reach the upstream"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)  # a hang guard: the server stops once its request is answered
        output = proc.stdout.read().decode()
        worker.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert result["resp"].status_code == 200
    assert result["resp"].json()["choices"][0]["message"]["content"] == "echo: hi"
    # the run finished during shutdown was still written
    con = sqlite3.connect(tmp_path / "o.db")
    try:
        rows = con.execute(
            "SELECT status FROM runs WHERE id = ?", (result["resp"].headers["x-optigraph-run-id"],)
        ).fetchall()
    finally:
        con.close()
    assert rows == [("completed",)]


def test_serve_logs_each_request_once_and_the_runs_a_crash_left_running(tmp_path: Path) -> None:
    """At start: how many runs are stored as running and how to resume them. Then one access-log line
    per request (method, path, status, latency, run id), streamed answers included."""
    db = tmp_path / "o.db"
    with start_stack(db, default_model="fake-model") as s:
        stuck = (
            s.client()
            .chat.completions.with_raw_response.create(
                model="none&none-fake-model", messages=[{"role": "user", "content": "hi"}]
            )
            .headers["x-optigraph-run-id"]
        )
        s.run(stuck)
    con = sqlite3.connect(db)
    with con:  # as a crash leaves it
        con.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE id = ?", (stuck,))
    con.close()
    with ServerThread(make_app()) as up:
        proc, url = serve_process(db, up.url, log_level="info")
        try:
            chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            plain = httpx.post(url + "/v1/chat/completions", json=chat, timeout=30)
            streamed = httpx.post(url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=30)
            missing = httpx.get(url + "/v1/runs/no-such-run", timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0].decode()
    assert "1 run stored as running" in output and "optigraph runs resume RUN_ID" in output, output
    assert "/v1/runs/RUN_ID/resume" in output
    access = [line for line in output.splitlines() if "optigraph.access" in line]
    posts = [line for line in access if "POST /v1/chat/completions" in line]
    assert len(posts) == 2, output  # one line per request: uvicorn's own access log is off
    for line, resp in zip(posts, (plain, streamed)):
        assert resp.status_code == 200 and " 200 " in line and f"run={resp.headers['x-optigraph-run-id']}" in line
        assert re.search(r" \d+\.\dms ", line)
    [line] = [line for line in access if "GET /v1/runs/no-such-run" in line]
    assert missing.status_code == 404 and " 404 " in line and "run=-" in line
