"""The service endpoints (/v1/models, /health, OpenAPI docs) and the `optigraph serve` process:
it answers /health soon after start and exits cleanly on SIGTERM, finishing in-flight requests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_stack import Stack, start_stack
from upstream import ServerThread, UpstreamLog, free_port, make_app


def test_models_lists_the_upstream_models(tmp_path: Path) -> None:
    with start_stack(tmp_path / "o.db", upstream={"model_ids": ("fake-model", "other-model")}) as s:
        models = s.client().models.list()
        ids = [m.id for m in models]
        assert ids[:2] == ["fake-model", "other-model"]
        assert s.settings.local_model in ids
        assert all(m.object == "model" for m in models)
        with s.http() as http:
            body = http.get("/v1/models").json()
        assert body["object"] == "list"
        assert {"none", "bon", "moa"} <= {a["id"] for a in body["approaches"]}


def test_health(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "optigraph", "serve", "--port", str(port), "--base-url", upstream_url + "/v1",
         "--db-url", f"sqlite:///{tmp_path / 'o.db'}", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not answer /health: {proc.communicate()[0].decode()}")
        time.sleep(0.05)


def test_sigterm_stops_the_server_cleanly(tmp_path: Path, slow_upstream: tuple[ServerThread, UpstreamLog]) -> None:
    up, log = slow_upstream
    proc, url = start_server(tmp_path, up.url)
    try:
        # a request in flight when SIGTERM arrives is still answered
        result: dict = {}

        def request() -> None:
            result["resp"] = httpx.post(url + "/v1/chat/completions", timeout=10,
                                        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})

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
        rows = con.execute("SELECT status FROM runs WHERE id = ?",
                           (result["resp"].headers["x-optigraph-run-id"],)).fetchall()
    finally:
        con.close()
    assert rows == [("completed",)]

