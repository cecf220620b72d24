"""Bounded input: expression length, approach count and total choices are capped (a 400 naming the
limit, before any work), a request body over the limit is a 413 (chunked ones too), and compiling a
new expression does not hold up the event loop."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_stack import Stack, start_stack

from optigraph.engine.registry import builtin_registry
from optigraph.graphs import none

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server with small limits, so that each can be crossed by a few bytes."""
    with start_stack(
        tmp_path_factory.mktemp("limits") / "l.db",
        default_model="fake-model",
        max_expression_chars=40,
        max_expression_nodes=6,
        max_choices=8,
        max_body_bytes=4096,
    ) as s:
        yield s


@pytest.fixture
def stack(small: Stack) -> Iterator[Stack]:
    small.reset()
    yield small
    small.reset()


def chat(stack: Stack, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with stack.http() as http:
        r = http.post("/v1/chat/completions", json={"messages": HELLO, "model": "fake-model", **body})
    return r.status_code, r.json()


def too_large(status: int, body: dict[str, Any], *, limit: str, param: str) -> None:
    assert status == 400, body
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "expression_too_large"
    assert limit in err["message"] and err["param"] == param


# 41 characters: over max_expression_chars (40), which is checked before the text is parsed
LONG = "none|none|none|none|none|(none&none&none)"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"optillm_approach": LONG}, "optillm_approach"),
        ({"model": f"{LONG}-fake-model"}, "model"),
        ({"model": "-".join(["none"] * 9) + "-fake-model"}, "model"),  # nine slug segments: 44 characters
        (
            {"messages": [{"role": "system", "content": f"<optillm_approach>{LONG}</optillm_approach>"}, *HELLO]},
            "messages",
        ),
    ],
)
def test_an_expression_longer_than_the_limit_is_refused(stack: Stack, body: dict[str, Any], param: str) -> None:
    status, out = chat(stack, body)
    too_large(status, out, limit="at most 40 (max_expression_chars)", param=param)
    assert stack.log.bodies == []


def test_an_expression_naming_too_many_approaches_is_refused(stack: Stack) -> None:
    status, out = chat(stack, {"optillm_approach": "none&none&none&none&none&none&none"})  # 7 > 6, 34 chars
    too_large(
        status,
        out,
        limit="names 7 approaches; this server allows at most 6 (max_expression_nodes)",
        param="optillm_approach",
    )
    status, out = chat(stack, {"optillm_approach": "none&none&none&none&none&none"})  # 6: served
    assert status == 200, out


def test_choices_times_n_are_capped(stack: Stack) -> None:
    status, out = chat(stack, {"optillm_approach": "(none|none)&(none|none)&(none|none)"})  # 8 choices: served
    assert status == 200 and len(out["choices"]) == 8
    status, out = chat(stack, {"optillm_approach": "(none|none)&(none|none)", "n": 3})  # 4 * 3 = 12 > 8
    too_large(status, out, limit="12 choices (4 per run, n=3); this server allows at most 8 (max_choices)", param="n")
    status, out = chat(stack, {"optillm_approach": "(none|none|none)&(none|none|none)"})  # 9 > 8 for one run
    too_large(status, out, limit="9 choices; this server allows at most 8", param="optillm_approach")
    assert len(stack.log.bodies) == 8 + 6  # only the served request reached the upstream


def test_the_defaults_refuse_an_exploding_expression(tmp_path) -> None:
    """64 approaches whose pipeline would multiply into 2**32 choices: refused before compiling."""
    exploding = "&".join(["(none|none)"] * 32)
    with start_stack(tmp_path / "d.db", default_model="fake-model", max_expression_chars=4096) as s:
        status, out = chat(s, {"optillm_approach": exploding})
        too_large(
            status, out, limit=f"{2**32} choices; this server allows at most 64 (max_choices)", param="optillm_approach"
        )
        status, out = chat(s, {"optillm_approach": "|".join(["none"] * 65)})
        too_large(status, out, limit="at most 64 (max_expression_nodes)", param="optillm_approach")
        status, out = chat(s, {"optillm_approach": "none" + " " * 4096})
        too_large(status, out, limit="4100 characters long; this server allows at most 4096", param="optillm_approach")


def test_the_approaches_page_applies_the_limits(stack: Stack) -> None:
    with stack.http() as http:
        r = http.get("/v1/approaches/" + "none%7C" * 6 + "none")
        assert r.status_code == 400 and r.json()["error"]["code"] == "expression_too_large"
        assert r.json()["error"]["param"] == "expression" and "max_expression_nodes" in r.json()["error"]["message"]
        assert http.get("/v1/approaches/none%7Cnone").status_code == 200


# ---- the body size ------------------------------------------------------------------------------


def body_of(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    head = b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def check_413(r: Any) -> None:
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "request_too_large"
    assert "4096 bytes (max_body_bytes)" in err["message"]


def test_a_body_at_the_limit_is_served_and_one_byte_more_is_a_413(stack: Stack) -> None:
    headers = {"content-type": "application/json"}
    with stack.http() as http:
        assert http.post("/v1/chat/completions", content=body_of(4096), headers=headers).status_code == 200
    with stack.http() as http:
        check_413(http.post("/v1/chat/completions", content=body_of(4097), headers=headers))
    assert len(stack.log.bodies) == 1


def test_a_chunked_body_over_the_limit_is_a_413(stack: Stack) -> None:
    data = body_of(10_000)

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent with Transfer-Encoding: chunked
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    with stack.http() as http:
        r = http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    check_413(r)
    with stack.http() as http:  # a small chunked body is served
        r = http.post(
            "/v1/chat/completions",
            content=iter([body_of(2000)[:1000], body_of(2000)[1000:]]),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200, r.text
    assert len(stack.log.bodies) == 1


def test_other_routes_have_the_body_limit_too(stack: Stack) -> None:
    with stack.http() as http:
        check_413(
            http.post(
                "/v1/runs/no-such-run/fork",
                content=b'{"patch": {"x": "' + b"y" * 5000 + b'"}}',
                headers={"content-type": "application/json"},
            )
        )


# ---- compiling off the event loop ---------------------------------------------------------------


def test_compiling_a_new_expression_does_not_block_other_requests(tmp_path) -> None:
    """The approach `held` takes as long to build as the test wants: while one request waits for its
    graph, the server must go on answering others (it could not if it compiled on the event loop)."""
    building, release = threading.Event(), threading.Event()

    def held_build() -> Any:
        building.set()
        release.wait(30)
        return none.build()

    registry = builtin_registry()
    registry.add(dataclasses.replace(none.SPEC, name="held", build=held_build))
    with start_stack(tmp_path / "c.db", default_model="fake-model", registry=registry) as s:
        result: dict[str, Any] = {}

        def slow_request() -> None:
            result["status"], result["body"] = chat(s, {"model": "held|none-fake-model"})

        worker = threading.Thread(target=slow_request)
        worker.start()
        try:
            assert building.wait(30)
            with httpx.Client(base_url=s.url, timeout=10) as http:  # answered while `held` is still being built
                assert http.get("/health").status_code == 200
                status, out = chat(s, {"model": "none&none-fake-model"})
                assert status == 200, out
            assert "status" not in result  # the first request is still waiting for its graph
        finally:
            release.set()
            worker.join(30)
        assert result["status"] == 200 and len(result["body"]["choices"]) == 2
