"""`optigraph serve` shutting down with a request stuck on its upstream: after the grace period the
run is interrupted (stored as such, resumable), its client gets an OpenAI-style 503, and the process
exits; a second SIGTERM does not wait out the grace."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import start_stack
from blocking_upstream import Gate, make_gated_app
from upstream import ServerThread, serve_process

WAIT_S = 30  # bounds for a loaded machine; nothing asserts how long anything took


@pytest.fixture
def gated() -> Iterator[tuple[ServerThread, Gate]]:
    gate = Gate(prompt="q")
    with ServerThread(make_gated_app(gate)) as up:
        yield up, gate


def serve(tmp_path: Path, upstream_url: str, grace_s: float) -> tuple[subprocess.Popen, str]:
    return serve_process(tmp_path / "o.db", upstream_url, "--shutdown-grace", str(grace_s), wait_s=WAIT_S)


def stuck_request(url: str, gate: Gate, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def send() -> None:
        result["resp"] = httpx.post(url + "/v1/chat/completions", timeout=WAIT_S, json=body)

    worker = threading.Thread(target=send)
    worker.start()
    assert gate.received.wait(WAIT_S), "the request did not reach the upstream"
    return worker, result


def stored(tmp_path: Path, run_id: str) -> tuple[str, int]:
    con = sqlite3.connect(tmp_path / "o.db")
    try:
        return con.execute("SELECT status, calls FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        con.close()


# each case starts a server process: two cases. One SIGTERM waits out a short grace; with a grace
# longer than the test waits, a second signal (Ctrl-C twice) interrupts the run at once.
@pytest.mark.parametrize(
    ("stream", "signals", "exit_code"), [(False, (signal.SIGTERM,), 0), (True, (signal.SIGINT, signal.SIGINT), 130)]
)
def test_shutdown_interrupts_a_stuck_run_after_the_grace(
    tmp_path: Path, gated: tuple[ServerThread, Gate], stream: bool, signals: tuple[int, ...], exit_code: int
) -> None:
    up, gate = gated
    proc, url = serve(tmp_path, up.url, grace_s=1 if len(signals) == 1 else 3600)
    try:
        worker, result = stuck_request(
            url,
            gate,
            {"model": "none&none-fake-model", "stream": stream, "messages": [{"role": "user", "content": "q"}]},
        )
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.2)  # let the first signal start the shutdown (an ordering aid, not a measurement)
            proc.send_signal(sig)
        code = proc.wait(timeout=WAIT_S)
        output = proc.stdout.read().decode()
        worker.join(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == exit_code, output
    assert "Traceback" not in output, output
    resp = result["resp"]
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "server_shutting_down" and resp.json()["error"]["type"] == "server_error"
    run_id = resp.headers["x-optigraph-run-id"]
    assert stored(tmp_path, run_id) == ("interrupted", 1)  # the abandoned call is counted
    assert gate.hung_up.wait(WAIT_S)  # the upstream saw its call abandoned

    gate.release.set()  # back up, on the same database: the run resumes from its checkpoint
    with start_stack(tmp_path / "o.db", base_url=up.url + "/v1", default_model="fake-model") as stack:
        r = httpx.post(f"{stack.url}/v1/runs/{run_id}/resume", timeout=WAIT_S)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "echo: echo: q"
        assert stack.run(run_id)["status"] == "completed"


def test_a_stream_interrupted_mid_way_ends_with_an_error_event(tmp_path: Path) -> None:
    gate = Gate(prompt="echo: q", mid_stream=True)  # the pipeline's second (streamed) stage is held
    with ServerThread(make_gated_app(gate)) as up:
        proc, url = serve(tmp_path, up.url, grace_s=1)
        events: list[str] = []
        first = threading.Event()

        def read() -> None:
            with httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                timeout=WAIT_S,
                json={"model": "none&none-fake-model", "stream": True, "messages": [{"role": "user", "content": "q"}]},
            ) as resp:
                events.append(resp.headers["x-optigraph-run-id"])
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()

        worker = threading.Thread(target=read)
        worker.start()
        try:
            assert first.wait(WAIT_S), "no chunk reached the client"
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=WAIT_S)
            worker.join(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0
        run_id, *data = events
        assert '"first"' in data[0]
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["code"] == "server_shutting_down" and run_id in error["message"]
        assert stored(tmp_path, run_id)[0] == "interrupted"
        assert gate.hung_up.wait(WAIT_S)
