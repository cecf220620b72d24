"""Upstream faults end to end (docs/reliability.md#faults): an upstream that drops the connection,
answers 500 or 429, or hangs. For each, streamed or not: what the client sees (an OpenAI-style error
with the right status), what is stored (the run `failed` with that error, every attempt recorded as
an upstream call), and that nothing is lost (the run resumes to completion once the upstream is back).
Then the circuit breaker: after N failures the upstream is not called, clients get a 503
`upstream_unavailable` with `Retry-After`, /health shows it open, and a probe after the cool-down
(a controllable clock) closes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, start_stack
from fault_upstream import FaultUpstream

MODEL = "none&none-fake-model"  # a two-stage pipeline: checkpointed, so a failed run resumes

# prompt -> (status the client gets, error code, upstream attempts: retries are 1)
FAULTS = {
    "drop": (502, "upstream_error", 2),
    "500": (502, "upstream_error", 2),
    "429": (429, "upstream_error", 2),
    "hang": (504, "upstream_timeout", 2),
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FaultUpstream]]:
    db = tmp_path_factory.mktemp("faults") / "o.db"
    with (
        FaultUpstream() as up,
        start_stack(
            db,
            base_url=up.url + "/v1",
            default_model="fake-model",
            upstream_retries=1,
            upstream_total_timeout_s=1.0,  # how long a hung attempt lasts (nothing measures it)
            upstream_read_timeout_s=1.0,
            breaker_failures=0,  # the table shows each fault alone; the breaker has its own test below
        ) as stack,
    ):
        yield stack, up


def post(stack: Stack, content: str, *, stream: bool) -> tuple[int, str, dict[str, Any]]:
    """Status, run id and error body of a request (a stream that failed before its first chunk is a
    plain error response)."""
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": content}]}
    with stack.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    return r.status_code, r.headers.get("x-optigraph-run-id", ""), r.json()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_each_fault_is_an_openai_error_a_failed_run_and_resumes(
    faulty: tuple[Stack, FaultUpstream], stream: bool
) -> None:
    stack, up = faulty
    up.healed = False
    runs: dict[str, str] = {}
    for fault, (status, code, attempts) in FAULTS.items():
        before = len(up.seen)
        got, run_id, body = post(stack, f"{fault} {stream}", stream=stream)
        assert got == status, (fault, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == code
        assert run_id and len(up.seen) - before == attempts
        row = stack.run(run_id)
        assert row["status"] == "failed" and row["error"]["error"]["code"] == code
        calls = stack.calls(run_id)
        assert [c["status"] for c in calls] == ["error"] * attempts and [c["attempt"] for c in calls] == [1, 2]
        runs[fault] = run_id
    if not stream:
        assert up.hung_up >= 2  # the hung attempts were abandoned, not left open upstream

    up.healed = True  # the upstream is back: every failed run resumes from its checkpoint
    for fault, run_id in runs.items():
        with stack.http() as http:
            r = http.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 200, (fault, r.text)
        assert r.json()["choices"][0]["message"]["content"] == f"echo: echo: {fault} {stream}"
        assert stack.run(run_id)["status"] == "completed"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_answers_503_with_retry_after_and_closes_after_a_probe(tmp_path: Path) -> None:
    clock = Clock()
    with (
        FaultUpstream() as up,
        start_stack(
            tmp_path / "o.db",
            base_url=up.url + "/v1",
            default_model="fake-model",
            upstream_retries=0,
            breaker_failures=2,
            breaker_cooldown_s=30,
        ) as stack,
    ):
        stack.server.server.config.app.state.backends.http.breaker.clock = clock
        for _ in range(2):
            assert post(stack, "500 boom", stream=False)[0] == 502
        assert len(up.seen) == 2

        for stream in (False, True):
            clock.now += 5
            with stack.http() as http:
                r = http.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "fine"}]},
                )
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "upstream_unavailable" and error["type"] == "upstream_error"
            assert r.headers["retry-after"] == ("25" if not stream else "20")
            refused = r.headers["x-optigraph-run-id"]
            row = stack.run(refused)
            assert row["status"] == "failed" and row["error"]["error"]["code"] == "upstream_unavailable"
        assert len(up.seen) == 2  # nothing was sent while open

        with stack.http() as http:
            health = http.get("/health").json()
        assert health["status"] == "degraded"
        assert health["backends"]["openai"]["breaker"] == {
            "state": "open",
            "consecutive_failures": 2,
            "opens": 1,
            "rejected": 2,
            "retry_after_s": 20.0,
        }

        clock.now += 20  # the cool-down is over: the next call is the probe; it succeeds
        with stack.http() as http:
            r = http.post(f"/v1/runs/{refused}/resume")
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "echo: echo: fine"
            assert http.get("/health").json()["backends"]["openai"]["breaker"]["state"] == "closed"
        assert stack.run(refused)["status"] == "completed"
