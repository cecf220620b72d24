"""The bad-input table: every client mistake and upstream failure gets the right status and an
OpenAI-style error body (never a 500), and a run that failed upstream is stored as failed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from api_stack import Stack, closed_port_url, start_stack
from upstream import HTTPFailure

HELLO = [{"role": "user", "content": "hello there"}]
OK = {"model": "fake-model", "messages": HELLO}
AUTH = {"authorization": "Bearer client-key"}


def check_error(
    resp: Any,
    status: int,
    *,
    type_: str,
    code: str | None,
    param: str | None = ...,  # type: ignore[assignment]
    says: tuple[str, ...] = (),
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"].strip()
    assert err["type"] == type_
    assert err["code"] == code
    if param is not ...:
        assert err["param"] == param
    for text in says:
        assert text in err["message"], err["message"]
    return err


# (id, body, status, type, param, code, words the message must contain)
BAD_REQUESTS = [
    ("not-an-object", [1, 2], 400, "invalid_request_error", None, "invalid_body", ("JSON object",)),
    (
        "missing-messages",
        {"model": "fake-model"},
        400,
        "invalid_request_error",
        "messages",
        "missing_required_parameter",
        ("messages",),
    ),
    ("missing-model", {"messages": HELLO}, 400, "invalid_request_error", "model", "missing_required_parameter", ()),
    ("empty-messages", {**OK, "messages": []}, 400, "invalid_request_error", "messages", "invalid_value", ()),
    ("messages-not-a-list", {**OK, "messages": "hi"}, 400, "invalid_request_error", "messages", "invalid_value", ()),
    (
        "bad-role",
        {**OK, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "invalid_request_error",
        "messages.0.role",
        "invalid_value",
        (),
    ),
    (
        "bad-content",
        {**OK, "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_request_error",
        "messages.0.content",
        "invalid_value",
        (),
    ),
    (
        "unknown-approach",
        {**OK, "optillm_approach": "nope"},
        400,
        "invalid_request_error",
        "optillm_approach",
        "unknown_approach",
        ("nope",),
    ),
    (
        "unknown-approach-in-expression",
        {**OK, "optillm_approach": "none|nope"},
        400,
        "invalid_request_error",
        "optillm_approach",
        "unknown_approach",
        ("nope",),
    ),
    (
        "unknown-approach-in-tag",
        {**OK, "messages": [{"role": "user", "content": "<optillm_approach>nope</optillm_approach> hi"}]},
        400,
        "invalid_request_error",
        "messages",
        "unknown_approach",
        ("nope",),
    ),
    (
        "expression-trailing-operator",
        {**OK, "optillm_approach": "bon&"},
        400,
        "invalid_request_error",
        "optillm_approach",
        "invalid_approach_expression",
        ("position 4", "'bon&'"),
    ),
    (
        "expression-unclosed-paren",
        {**OK, "optillm_approach": "(bon"},
        400,
        "invalid_request_error",
        "optillm_approach",
        "invalid_approach_expression",
        ("position 0", "'(bon'"),
    ),
    (
        "expression-double-operator",
        {**OK, "optillm_approach": "bon||moa"},
        400,
        "invalid_request_error",
        "optillm_approach",
        "invalid_approach_expression",
        ("position 4", "'bon||moa'"),
    ),
    (
        "expression-in-model-prefix",
        {**OK, "model": "bon&-fake-model"},
        400,
        "invalid_request_error",
        "model",
        "invalid_approach_expression",
        ("position 4",),
    ),
    (
        "params-for-none-nested",
        {**OK, "optillm_params": {"none": {"temperature": 0.5}}},
        400,
        "invalid_request_error",
        "optillm_params.none.temperature",
        "invalid_approach_parameter",
        ("none",),
    ),
    (
        "params-for-none-flat",
        {**OK, "optillm_params": {"depth": 2}},
        400,
        "invalid_request_error",
        "optillm_params.none.depth",
        "invalid_approach_parameter",
        ("none",),
    ),
    (
        "params-for-approach-not-in-expression",
        {**OK, "optillm_params": {"bon": {"n": 2}}},
        400,
        "invalid_request_error",
        "optillm_params",
        "invalid_approach_parameter",
        ("bon",),
    ),
    (
        "params-not-an-object",
        {**OK, "optillm_params": [1]},
        400,
        "invalid_request_error",
        "optillm_params",
        "invalid_value",
        (),
    ),
    ("n-zero", {**OK, "n": 0}, 400, "invalid_request_error", "n", "invalid_value", ()),
    ("n-too-large", {**OK, "n": 17}, 400, "invalid_request_error", "n", "invalid_value", ("16",)),
    ("n-not-a-number", {**OK, "n": "three"}, 400, "invalid_request_error", "n", "invalid_value", ()),
    ("max-tokens-zero", {**OK, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens", "invalid_value", ()),
    (
        "max-tokens-too-large",
        {**OK, "max_tokens": 131073},
        400,
        "invalid_request_error",
        "max_tokens",
        "invalid_value",
        ("131072",),
    ),
    (
        "max-completion-tokens-too-large",
        {**OK, "max_completion_tokens": 10**9},
        400,
        "invalid_request_error",
        "max_completion_tokens",
        "invalid_value",
        (),
    ),
    ("temperature-3", {**OK, "temperature": 3}, 400, "invalid_request_error", "temperature", "invalid_value", ()),
    ("top-p-above-1", {**OK, "top_p": 1.5}, 400, "invalid_request_error", "top_p", "invalid_value", ()),
    (
        "too-many-stops",
        {**OK, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "invalid_request_error",
        "stop",
        "invalid_value",
        (),
    ),
    (
        "top-logprobs-without-logprobs",
        {**OK, "top_logprobs": 2},
        400,
        "invalid_request_error",
        "top_logprobs",
        "invalid_value",
        (),
    ),
    ("stream-not-bool", {**OK, "stream": "maybe"}, 400, "invalid_request_error", "stream", "invalid_value", ()),
    (
        "stream-options-not-bool",
        {**OK, "stream_options": {"include_usage": "maybe"}},
        400,
        "invalid_request_error",
        "stream_options.include_usage",
        "invalid_value",
        (),
    ),
]


@pytest.mark.parametrize(
    "body,status,type_,param,code,says", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request(
    stack: Stack, body: Any, status: int, type_: str, param: str | None, code: str, says: tuple[str, ...]
) -> None:
    with stack.http() as http:
        check_error(
            http.post("/v1/chat/completions", json=body, headers=AUTH),
            status,
            type_=type_,
            param=param,
            code=code,
            says=says,
        )
        # the same mistake in a streamed request is answered the same way, before any SSE
        if isinstance(body, dict) and "stream" not in body:
            check_error(
                http.post("/v1/chat/completions", json={**body, "stream": True}, headers=AUTH),
                status,
                type_=type_,
                param=param,
                code=code,
            )
    assert stack.log.bodies == []  # nothing reached the upstream


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "fake-model", "messages": [', b"\xff\xfe"])
def test_malformed_json(stack: Stack, raw: bytes) -> None:
    with stack.http() as http:
        resp = http.post("/v1/chat/completions", content=raw, headers={**AUTH, "content-type": "application/json"})
    check_error(resp, 400, type_="invalid_request_error", code="invalid_json", says=("JSON",))


def test_openai_client_raises_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(model="fake-model", messages=HELLO, n=0)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "n" and info.value.body["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(
            model="fake-model", messages=HELLO, extra_body={"optillm_approach": "bon||moa"}
        )
    assert "position 4" in info.value.body["message"]


@pytest.mark.parametrize(
    "method,path,status,type_",
    [
        ("GET", "/v1/nope", 404, "not_found_error"),
        ("POST", "/v2/chat/completions", 404, "not_found_error"),
        ("GET", "/v1/chat/completions", 405, "invalid_request_error"),
    ],
)
def test_unknown_route(stack: Stack, method: str, path: str, status: int, type_: str) -> None:
    with stack.http() as http:
        resp = http.request(method, path, headers=AUTH)
    check_error(resp, status, type_=type_, code=str(status))


def test_openai_client_unknown_route(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        stack.client().images.generate(model="fake-model", prompt="hi")  # not a route optigraph serves


# ---- upstream failures -------------------------------------------------------------------------


def failed_run(stack: Stack, run_id: str, *, says: str, attempts: int) -> None:
    run = stack.run(run_id)
    assert run["status"] == "failed"
    assert says in run["error"]["error"]["message"]
    assert run["finished_at"] is not None and run["latency_ms"] > 0
    calls = stack.calls(run_id)
    assert [c["status"] for c in calls] == ["error"] * attempts
    assert [c["attempt"] for c in calls] == list(range(1, attempts + 1))
    assert all(says in c["error"] for c in calls)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_500_gives_502_with_its_message(stack: Stack, stream: bool) -> None:
    stack.script.fn = lambda body, i: HTTPFailure(500, "the upstream is on fire")
    with stack.http() as http:
        resp = http.post("/v1/chat/completions", json={**OK, "stream": stream}, headers=AUTH)
    check_error(resp, 502, type_="upstream_error", code="upstream_error", says=("the upstream is on fire", "500"))
    attempts = 1 + stack.settings.upstream_retries  # a 500 is retried (a stream too: no chunk was sent)
    assert len(stack.log.bodies) == attempts
    failed_run(stack, resp.headers["x-optigraph-run-id"], says="the upstream is on fire", attempts=attempts)


def test_upstream_500_in_composite(stack: Stack) -> None:
    stack.script.fn = lambda body, i: HTTPFailure(500, "the upstream is on fire")
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model="none&none-fake-model", messages=HELLO)
    assert info.value.status_code == 502 and "the upstream is on fire" in info.value.body["message"]
    run = stack.run(info.value.response.headers["x-optigraph-run-id"])
    assert run["status"] == "failed" and run["expression"] == "none&none"
    assert "the upstream is on fire" in run["error"]["error"]["message"]


def test_upstream_client_error_keeps_its_status(stack: Stack) -> None:
    stack.script.fn = lambda body, i: HTTPFailure(400, "this model does not support that")
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(model="fake-model", messages=HELLO)
    assert "this model does not support that" in info.value.body["message"]
    assert len(stack.log.bodies) == 1  # not retried
    failed_run(
        stack, info.value.response.headers["x-optigraph-run-id"], says="this model does not support that", attempts=1
    )


def test_upstream_error_after_first_chunk_is_an_event(stack: Stack) -> None:
    """A stream that already started cannot change its status: the error comes as an SSE event."""
    stack.script.fn = lambda body, i: (
        HTTPFailure(500, "second stage failed")
        if "echo" in body["messages"][-1]["content"]
        else f"echo: {body['messages'][-1]['content']}"
    )
    # `none|none&none`: the first branch streams; then the second branch's second stage fails
    stream = stack.client().chat.completions.create(model="(none|none&none)-fake-model", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "second stage failed" in str(info.value)


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory.mktemp("slow") / "o.db",
        upstream={"latency": 1.0},
        upstream_total_timeout_s=0.3,
        upstream_retries=1,
    ) as s:
        yield s


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_timeout_gives_504(slow_upstream: Stack, stream: bool) -> None:
    with slow_upstream.http() as http:
        resp = http.post("/v1/chat/completions", json={**OK, "stream": stream}, headers=AUTH)
    check_error(resp, 504, type_="upstream_error", code="upstream_timeout", says=("timed out",))
    failed_run(
        slow_upstream, resp.headers["x-optigraph-run-id"], says="timed out", attempts=2
    )  # retried once (upstream_retries=1 here), a stream too: nothing was sent yet


@pytest.fixture(scope="module")
def no_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("closed") / "o.db", base_url=closed_port_url()) as s:
        yield s


@pytest.mark.parametrize("model", ["fake-model", "none|none-fake-model"])
def test_upstream_unreachable_gives_502(no_upstream: Stack, model: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        no_upstream.client().chat.completions.create(model=model, messages=HELLO)
    resp = info.value.response
    err = check_error(resp, 502, type_="upstream_error", code="upstream_error", says=("unreachable",))
    assert "Connect" in err["message"]
    run = no_upstream.run(resp.headers["x-optigraph-run-id"])
    assert run["status"] == "failed" and "unreachable" in run["error"]["error"]["message"]


def test_upstream_unreachable_streaming_gives_502(no_upstream: Stack) -> None:
    with no_upstream.http() as http:
        resp = http.post("/v1/chat/completions", json={**OK, "stream": True}, headers=AUTH)
    check_error(resp, 502, type_="upstream_error", code="upstream_error")
    failed_run(
        no_upstream,
        resp.headers["x-optigraph-run-id"],
        says="Connect",
        attempts=1 + no_upstream.settings.upstream_retries,
    )  # nothing was sent: retried like any call


def test_models_still_answer_when_upstream_unreachable(no_upstream: Stack) -> None:
    with no_upstream.http() as http:
        resp = http.get("/v1/models")
    assert resp.status_code == 200
    assert resp.json()["data"] == []  # beside an upstream, local models are listed only when clients may use them
    assert {"none", "bon"} <= {a["id"] for a in resp.json()["approaches"]}


def test_approach_only_model_without_a_default_is_a_400(tmp_path) -> None:
    from api_stack import start_stack

    with start_stack(tmp_path / "x.db") as s:
        resp = s.http().post(
            "/v1/chat/completions", json={"model": "bon", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert err["param"] == "model" and err["code"] == "model_required" and "--default-model" in err["message"]
        assert s.log.bodies == []


def test_run_limits_end_a_run_with_a_clear_message(stack: Stack) -> None:
    body = {**OK, "model": "bon-fake-model", "optigraph": {"max_upstream_calls": 2}}
    with stack.http() as http:
        resp = http.post("/v1/chat/completions", json=body, headers=AUTH)
    check_error(resp, 400, type_="invalid_request_error", code="budget_exceeded", says=("cap of 2 upstream calls",))
    # The cap holds: the sample call, then the ratings start together; one takes the second call and
    # the next is refused, which ends the run, so the one that took the call may be cancelled before
    # its request is written (whether it was depends on when each reached the network).
    assert 1 <= len(stack.log.bodies) <= 2
    assert all("optigraph" not in b for b in stack.log.bodies)
    run = stack.run(resp.headers["x-optigraph-run-id"])
    assert run["status"] == "failed" and run["error"]["error"]["code"] == "budget_exceeded"


def test_run_limits_are_validated(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.post("/v1/chat/completions", json={**OK, "optigraph": {"max_upstream_calls": 0}}, headers=AUTH)
    check_error(resp, 400, type_="invalid_request_error", code="invalid_value", says=("max_upstream_calls",))
