"""Client input that reaches internal code: request fields named like internal keyword arguments,
upstreams that answer something else than the API promises, and a failed fork. Each gets a clear
4xx/502 naming the right run, never a 500; a seeded fuzz test sends random extra fields through
every approach, streaming and not."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from api_stack import Stack, last_user_text, start_stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from upstream import HTTPFailure, ServerThread, echo_responder

HELLO = [{"role": "user", "content": "What is 6 times 7?"}]
# Names of keyword arguments and state keys inside the engine, nodes and LLM client.
INTERNAL_NAMES = (
    "node",
    "sink",
    "stream_choice",
    "partial",
    "messages",
    "request",
    "params",
    "branch",
    "config",
    "runtime",
    "fields",
    "state",
    "context",
    "n",
    "model",
    "stream",
    "stream_options",
    "run_id",
    "thread_id",
    "checkpoint_ns",
    "answers",
    "usage",
    "notes",
    "outputs",
    "optillm_params",
    "optigraph",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("fields") / "f.db", default_model="fake-model") as s:
        yield s


@pytest.fixture
def stack(server: Stack) -> Iterator[Stack]:
    server.reset()
    yield server
    server.reset()


def post(stack: Stack, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    with stack.http() as http:
        r = http.post("/v1/chat/completions", json=body)
    return r.status_code, r.content, dict(r.headers)


def no_server_error(status: int, content: bytes) -> None:
    assert status < 500, content[:500]
    assert b'"server_error"' not in content, content[:500]  # nor an internal error inside a 200 stream


# ---- fields named like internal keyword arguments ---------------------------------------------------


@pytest.mark.parametrize("model", ["none|none-fake-model", "re2&none-fake-model", "none-fake-model"])
@pytest.mark.parametrize("stream", [False, True])
def test_fields_named_like_internal_arguments_are_forwarded_as_fields(stack: Stack, model: str, stream: bool) -> None:
    extra = {"node": "mine", "sink": 1, "stream_choice": "x", "partial": True}
    status, content, headers = post(stack, {"model": model, "messages": HELLO, "stream": stream, **extra})
    no_server_error(status, content)
    assert status == 200
    # each `none` call got them as plain fields, with their values (re2 sends only generation fields)
    forwarded = [b for b in stack.log.bodies if {k: b.get(k) for k in extra} == extra]
    assert len(forwarded) == model.count("none") >= 1
    assert stack.run(headers["x-optigraph-run-id"])["status"] == "completed"


# ---- upstreams that answer wrongly --------------------------------------------------------------


def odd_upstream(models_body: bytes) -> Starlette:
    """Answers every chat request with zero choices, and /models with `models_body`."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body.get("stream"):
            return Response(b"data: [DONE]\n\n", media_type="text/event-stream")
        return Response(
            orjson.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
                }
            ),
            media_type="application/json",
        )

    async def models(_: Request) -> Response:
        return Response(models_body, media_type="text/html")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with (
        ServerThread(odd_upstream(b"<html>not an API</html>")) as up,
        start_stack(tmp_path_factory.mktemp("odd") / "o.db", base_url=up.url + "/v1", default_model="fake-model") as s,
    ):
        yield s


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["fake-model", "none|none-fake-model", "bon-fake-model", "moa-fake-model"])
def test_an_upstream_answering_no_choices_is_a_502_naming_the_run(odd: Stack, model: str, stream: bool) -> None:
    status, content, headers = post(odd, {"model": model, "messages": HELLO, "stream": stream})
    assert status == 502, content
    err = orjson.loads(content)["error"]
    assert err["type"] == "upstream_error" and err["code"] == "upstream_invalid_response"
    assert "no choices" in err["message"]
    run = odd.run(headers["x-optigraph-run-id"])
    assert run["status"] == "failed" and "no choices" in run["error"]["error"]["message"]


def test_a_models_list_that_is_not_json_is_a_502(odd: Stack) -> None:
    with odd.http() as http:
        r = http.get("/v1/models")
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and err["code"] == "upstream_invalid_response"
    assert "not JSON" in err["message"] and "<html>" in err["message"]


# ---- a failed fork --------------------------------------------------------------------------------


def test_a_failed_fork_names_the_new_run_not_its_source(stack: Stack) -> None:
    def second_stage_refused(body: dict[str, Any], index: int) -> Any:
        if last_user_text(body).startswith("echo:"):
            return HTTPFailure(400, "the upstream refuses stage two")
        return echo_responder(body, index)

    stack.script.fn = second_stage_refused
    status, _, headers = post(stack, {"model": "none&none-fake-model", "messages": HELLO})
    assert status == 400
    source = headers["x-optigraph-run-id"]
    assert stack.run(source)["status"] == "failed"

    with stack.http() as http:  # from the latest checkpoint: stage two runs again, and fails again
        r = http.post(f"/v1/runs/{source}/fork", json={})
    assert r.status_code == 400, r.text
    assert "refuses stage two" in r.json()["error"]["message"]
    forked = r.headers["x-optigraph-run-id"]
    assert forked != source
    run = stack.run(forked)
    assert run["status"] == "failed" and run["parent_id"] == source
    assert stack.run(source)["status"] == "failed"

    with stack.http() as http:  # refused before a run was made: no run is named
        r = http.post(f"/v1/runs/{source}/fork", json={"checkpoint_id": "no-such-checkpoint"})
    assert r.status_code == 404 and "x-optigraph-run-id" not in r.headers


# ---- fuzz: random extra fields through every approach ---------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 7, 2**31, -(2**40)])
    if kind == "float":
        return rng.choice([0.0, 0.5, -3.25, 1e300])
    if kind == "str":
        return rng.choice(["", "x", "none", "bon&moa", "<optillm_approach>moa</optillm_approach>", "\u00e9\u2603"])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_name(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_name(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(INTERNAL_NAMES)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(1, 12)))


def approach_names(stack: Stack) -> list[str]:
    with stack.http() as http:
        r = http.get("/v1/approaches")
    assert r.status_code == 200
    return sorted(a["name"] for a in r.json()["data"])


def test_random_extra_fields_never_cause_a_server_error(stack: Stack) -> None:
    rng = random.Random(13)
    names = approach_names(stack)
    assert "none" in names and "bon" in names and len(names) >= 20
    expressions = names + ["none|none", "re2&none", "(none|bon)&none"]
    answered = 0
    for expression in expressions:
        for stream in (False, True):
            extra = {random_name(rng): random_value(rng) for _ in range(rng.randint(1, 4))}
            body = {**extra, "model": f"{expression}-fake-model", "messages": HELLO, "stream": stream, "max_tokens": 64}
            if rng.random() < 0.25:  # sometimes the internal names override the request's own fields too
                body.update({k: v for k, v in extra.items() if k in ("messages", "model", "stream", "n")})
            status, content, _ = post(stack, body)
            no_server_error(status, content)
            answered += status == 200
    assert answered >= len(expressions)  # most draws are plain extra fields the upstream is sent
