"""A client that disconnects cancels its run, streaming or not: the upstream call in flight is
abandoned (the upstream sees its client go), the run is stored as `cancelled`, and it can be resumed.
A request that asks to finish in the background is not cancelled."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_stack import Stack, start_stack
from blocking_upstream import Gate, make_gated_app
from upstream import ServerThread

WAIT_S = 20  # generous bounds for a loaded machine; nothing asserts how long anything took


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Stack, Gate]]:
    gate = Gate(prompt="q")
    with (
        ServerThread(make_gated_app(gate)) as up,
        start_stack(tmp_path / "o.db", base_url=up.url + "/v1", default_model="fake-model") as stack,
    ):
        yield stack, gate


def latest_run_id(stack: Stack) -> str:
    """The newest run's id, once the recorder (which writes in the background) has stored it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        con = sqlite3.connect(stack.db_path, timeout=5)
        try:
            row = con.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
        finally:
            con.close()
        if row is not None:
            return row[0]
        if time.monotonic() > deadline:  # a hang guard, not a timing check
            raise AssertionError("no run was stored")
        time.sleep(0.02)


async def hang_up_when_held(stack: Stack, gate: Gate, body: dict[str, Any]) -> None:
    """Sends `body`, and disconnects once the upstream holds its call."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=WAIT_S) as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        assert await asyncio.to_thread(gate.received.wait, WAIT_S), "the call did not reach the upstream"
        request.cancel()  # closes the connection
        with pytest.raises(asyncio.CancelledError):
            await request


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_goes_cancels_its_run_which_resumes(gated: tuple[Stack, Gate], stream: bool) -> None:
    stack, gate = gated
    await hang_up_when_held(
        stack, gate, {"model": "none&none-fake-model", "stream": stream, "messages": [{"role": "user", "content": "q"}]}
    )
    assert await asyncio.to_thread(gate.hung_up.wait, WAIT_S), "the upstream call was not abandoned"
    run_id = latest_run_id(stack)
    run = await asyncio.to_thread(stack.run, run_id, timeout=WAIT_S)
    assert run["status"] == "cancelled" and run["error"]["error"]["code"] == "client_disconnected"
    calls = stack.calls(run_id)
    assert [c["status"] for c in calls] == ["error"] and "cancelled" in calls[0]["error"]
    assert run["calls"] == 1

    gate.release.set()
    async with httpx.AsyncClient(base_url=stack.url, timeout=WAIT_S) as client:
        r = await client.post(f"/v1/runs/{run_id}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: echo: q"
    assert (await asyncio.to_thread(stack.run, run_id))["status"] == "completed"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_background_run_finishes_without_its_client(gated: tuple[Stack, Gate], stream: bool) -> None:
    stack, gate = gated
    await hang_up_when_held(
        stack,
        gate,
        {
            "model": "none&none-fake-model",
            "stream": stream,
            "optigraph": {"background": True},
            "messages": [{"role": "user", "content": "q"}],
        },
    )
    run_id = latest_run_id(stack)
    gate.release.set()
    run = await asyncio.to_thread(stack.run, run_id, timeout=WAIT_S)
    assert run["status"] == "completed" and not gate.hung_up.is_set()
    assert [c["status"] for c in stack.calls(run_id)] == ["ok", "ok"]


async def test_a_passthrough_run_is_cancelled_too(gated: tuple[Stack, Gate]) -> None:
    stack, gate = gated
    await hang_up_when_held(stack, gate, {"model": "fake-model", "messages": [{"role": "user", "content": "q"}]})
    assert await asyncio.to_thread(gate.hung_up.wait, WAIT_S)
    run = await asyncio.to_thread(stack.run, latest_run_id(stack), timeout=WAIT_S)
    assert run["status"] == "cancelled" and run["calls"] == 1
