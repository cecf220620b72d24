"""The circuit breaker on a controllable clock: it opens after N consecutive failures (no answer or a
5xx; a 4xx is an answer), refuses calls at once while open, lets one probe through after the
cool-down, closes on the probe's success and opens again on its failure. Then the same through a real
HTTP client in front of a real loopback upstream, one breaker per upstream of a server, and the
jittered backoff between retries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import HTTPFailure, ServerThread, UpstreamLog, make_app  # noqa: E402

from optigraph.backends.breaker import CircuitBreaker  # noqa: E402
from optigraph.backends.openai_http import OpenAIHTTPBackend  # noqa: E402
from optigraph.backends.router import Backends  # noqa: E402
from optigraph.config import Settings, UpstreamSettings  # noqa: E402
from optigraph.core.llm import LLM  # noqa: E402
from optigraph.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server_error() -> UpstreamError:
    return UpstreamError("upstream returned 500: boom", upstream_status=500, retryable=True)


def test_opens_after_n_consecutive_failures_and_refuses_at_once() -> None:
    clock = Clock()
    b = CircuitBreaker("up", failures=3, cooldown_s=30, clock=clock)
    for _ in range(2):
        b.before_call()
        b.failed(server_error())
    assert b.state == "closed"
    b.before_call()
    b.failed(UpstreamTimeout("no answer"))
    assert b.state == "open" and b.opens == 1
    clock.now += 10
    with pytest.raises(UpstreamUnavailable) as err:
        b.before_call()
    assert err.value.status == 503 and err.value.code == "upstream_unavailable"
    assert err.value.retry_after_s == 20 and not err.value.retryable
    assert b.report() == {
        "state": "open",
        "consecutive_failures": 3,
        "opens": 1,
        "rejected": 1,
        "retry_after_s": 20.0,
    }


def test_a_success_or_a_client_error_resets_the_count() -> None:
    b = CircuitBreaker("up", failures=2, cooldown_s=30, clock=Clock())
    b.failed(server_error())
    b.succeeded()
    b.failed(server_error())
    assert b.state == "closed" and b.consecutive == 1
    b.failed(UpstreamError("upstream returned 429: slow down", upstream_status=429))  # an answer: it is up
    b.failed(UpstreamError("upstream returned 400: bad", upstream_status=400))
    b.failed(server_error())
    assert b.state == "closed" and b.consecutive == 1


def test_half_open_lets_one_probe_through_and_closes_on_its_success() -> None:
    clock = Clock()
    b = CircuitBreaker("up", failures=1, cooldown_s=30, clock=clock)
    b.failed(server_error())
    clock.now += 30
    assert b.state == "half_open"
    b.before_call()  # the probe
    with pytest.raises(UpstreamUnavailable):  # a second call waits for the probe's outcome
        b.before_call()
    b.succeeded()
    assert b.state == "closed" and b.report()["consecutive_failures"] == 0
    b.before_call()


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker("up", failures=2, cooldown_s=30, clock=clock)
    b.failed(server_error())
    b.failed(server_error())
    clock.now += 31
    b.before_call()
    b.failed(server_error())
    assert b.state == "open" and b.opens == 2
    assert b.retry_after_s() == 30
    clock.now += 29
    with pytest.raises(UpstreamUnavailable):
        b.before_call()


def test_a_probe_that_never_reports_lets_another_go_after_a_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker("up", failures=1, cooldown_s=5, clock=clock)
    b.failed(server_error())
    clock.now += 5
    b.before_call()  # the probe, then nothing: its run was cancelled
    clock.now += 2
    with pytest.raises(UpstreamUnavailable) as err:
        b.before_call()
    assert err.value.retry_after_s == 3
    clock.now += 3
    b.before_call()  # another probe
    assert b.probing and b.rejected == 1


def test_zero_failures_turns_it_off() -> None:
    b = CircuitBreaker("up", failures=0, clock=Clock())
    for _ in range(50):
        b.before_call()
        b.failed(server_error())
    assert b.report()["state"] == "disabled"


async def test_the_http_client_stops_calling_a_failing_upstream_until_the_probe() -> None:
    clock = Clock()
    log = UpstreamLog()
    healthy = {"ok": False}

    def responder(body: dict, i: int) -> str | Exception:
        return "fine" if healthy["ok"] else HTTPFailure(500, "down")

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with ServerThread(make_app(responder, log=log)) as up:
        client = OpenAIHTTPBackend(
            up.url + "/v1", breaker=CircuitBreaker("openai", failures=2, cooldown_s=30, clock=clock)
        )
        try:
            for _ in range(2):
                with pytest.raises(UpstreamError) as err:
                    await client.complete(body)
                assert err.value.upstream_status == 500
            with pytest.raises(UpstreamUnavailable):
                await client.complete(body)
            with pytest.raises(UpstreamUnavailable):  # streams are refused too, before any byte is sent
                async for _ in client.stream(body):
                    pass
            assert len(log.bodies) == 2  # the refused calls never reached the upstream
            assert client.outcomes.report()["breaker"]["state"] == "open"
            assert client.outcomes.report()["reachable"] is False

            healthy["ok"] = True
            clock.now += 30
            data = await client.complete(body)  # the probe
            assert data["choices"][0]["message"]["content"] == "fine"
            assert client.outcomes.report()["breaker"]["state"] == "closed" and len(log.bodies) == 3
        finally:
            await client.aclose()


def test_each_upstream_of_a_server_has_its_own_breaker() -> None:
    settings = Settings(
        base_url="http://127.0.0.1:9/v1",
        upstreams={"second": UpstreamSettings(url="http://127.0.0.1:9/v1")},
        breaker_failures=3,
        breaker_cooldown_s=12,
    )
    backends = Backends(settings)
    main, second = backends.http, backends.named["second"]
    assert main is not None and main.breaker is not None and second.breaker is not None
    assert main.breaker is not second.breaker
    assert (second.breaker.failures, second.breaker.cooldown_s, second.breaker.name) == (3, 12, "openai:second")
    for _ in range(3):
        main.breaker.failed(server_error())
    health = backends.health()
    assert health["openai"]["breaker"]["state"] == "open"
    assert health["openai:second"]["breaker"]["state"] == "closed"


def test_retry_backoff_is_jittered_within_half_and_all_of_its_step() -> None:
    llm = LLM(backend=OpenAIHTTPBackend("http://127.0.0.1:9/v1"), model="m", run_id="r", recorder=None)  # type: ignore[arg-type]
    for attempt, step in ((1, 0.2), (2, 0.4), (3, 0.8)):
        waits = {llm._backoff_s(attempt) for _ in range(200)}
        assert all(step / 2 <= w <= step for w in waits)
        assert len(waits) > 100  # spread out, not one value for every client
