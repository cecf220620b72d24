"""`optigraph serve` in a container that forbids namespaces (unshare(2) refused by the kernel, as
Docker's default seccomp profile does): at the default sandbox level a `z3` request answers without
running the model's program and its run record says why; `--sandbox-level reduced` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import no_namespaces  # noqa: E402
from upstream import ServerThread, UpstreamLog, make_app, serve_process  # noqa: E402

pytestmark = pytest.mark.skipif(not no_namespaces.supported(), reason="the sandbox confines with Linux mechanisms")

PROGRAM = """from z3 import *
x, y = Ints("x y")
s = Solver()
s.add(x + y == 10, x - y == 2)
s.check()
m = s.model()
print(f"x={m[x]} y={m[y]}")"""
ANALYSIS = f"Two unknowns, two linear constraints.\nSOLVER_CAN_BE_APPLIED: True\n```python\n{PROGRAM}\n```\n"
GROUNDED = "From the solver: 6 and 4."
PLAIN = "Plain reasoning: 6 and 4."


def responder(body: dict[str, Any], index: int) -> str:
    system = "\n".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "system")
    if "What the program printed" in system:
        assert "x=6 y=4" in system
        return GROUNDED
    if "SOLVER_CAN_BE_APPLIED" in system:
        return ANALYSIS
    return PLAIN


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, UpstreamLog]]:
    log = UpstreamLog()
    with ServerThread(make_app(responder, log=log)) as up:
        yield up, log


def start_server(tmp_path: Path, upstream_url: str, *flags: str) -> tuple[subprocess.Popen, str]:
    return serve_process(tmp_path / "o.db", upstream_url, *flags, command=no_namespaces.command)


def ask(url: str) -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
    return client.chat.completions.create(
        model="z3-fake-model",
        messages=[{"role": "user", "content": "Two numbers sum to 10 and differ by 2. What are they?"}],
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_default_level_answers_without_execution_and_records_why(tmp_path, upstream):
    up, log = upstream
    proc, url = start_server(tmp_path, up.url)
    try:
        log.bodies.clear()
        response = ask(url)
        assert response.choices[0].message.content == PLAIN
        assert len(log.bodies) == 2  # the analysis and the plain answer: no fix, no grounded answer
        run_id = response.model_extra["optigraph"]["run_id"]
        record = httpx.get(f"{url}/v1/runs/{run_id}", timeout=30).json()
    finally:
        stop(proc)
    assert record["status"] == "completed"
    shown = json.dumps(record)
    assert (
        "execute: run 1 not started: sandbox level 'strict' requires layers that are not in force: "
        "namespaces (unshare: Operation not permitted); tmpfs (needs the namespaces layer); "
        "the program was not run"
    ) in shown
    assert "reason: answering without the solver; the sandbox could not run the program" in shown
    assert '"error_kind": "unavailable"' in shown


def test_sandbox_level_reduced_runs_the_program_without_namespaces(tmp_path, upstream):
    up, _ = upstream
    proc, url = start_server(tmp_path, up.url, "--sandbox-level", "reduced")
    try:
        response = ask(url)
        run_id = response.model_extra["optigraph"]["run_id"]
        shown = json.dumps(httpx.get(f"{url}/v1/runs/{run_id}", timeout=30).json())
    finally:
        stop(proc)
    assert response.choices[0].message.content == GROUNDED
    assert "execute: run 1 succeeded" in shown and "x=6 y=4" in shown
