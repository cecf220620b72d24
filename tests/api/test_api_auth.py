"""Client authentication (`api_key`) and which key goes upstream."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from api_stack import Stack, start_stack

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("auth") / "o.db", api_key="k") as s:
        yield s


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("open") / "o.db") as s:
        yield s


@pytest.fixture(scope="module")
def server_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("upkey") / "o.db", upstream_api_key="upstream-secret") as s:
        yield s


def check_401(resp) -> None:
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    err = resp.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key" and err["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic k"},
        {"authorization": "Bearer"},
        {"authorization": "k"},
    ],
    ids=["none", "wrong", "basic", "empty", "no-scheme"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_missing_or_wrong_key_is_401(locked: Stack, headers: dict, stream: bool) -> None:
    locked.reset()
    with locked.http() as http:
        check_401(
            http.post(
                "/v1/chat/completions",
                json={"model": "fake-model", "messages": HELLO, "stream": stream},
                headers=headers,
            )
        )
        check_401(http.get("/v1/models", headers=headers))
    assert locked.log.bodies == []


def test_wrong_key_with_openai_client(locked: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        locked.client(api_key="wrong").chat.completions.create(model="fake-model", messages=HELLO)
    assert info.value.status_code == 401 and info.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        locked.client(api_key="wrong").models.list()


def test_right_key_works_and_is_not_forwarded(locked: Stack) -> None:
    locked.reset()
    r = locked.client(api_key="k").chat.completions.create(model="fake-model", messages=HELLO)
    assert r.choices[0].message.content == "echo: hello there"
    stream = locked.client(api_key="k").chat.completions.create(model="fake-model", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: hello there"
    assert len(locked.log.headers) == 2
    for headers in locked.log.headers:
        assert "authorization" not in headers
    assert "fake-model" in [m.id for m in locked.client(api_key="k").models.list()]


def test_health_needs_no_key(locked: Stack) -> None:
    with locked.http() as http:
        assert http.get("/health").status_code == 200


@pytest.mark.parametrize("model", ["fake-model", "none|none-fake-model"])
def test_client_bearer_forwarded_without_server_keys(open_server: Stack, model: str) -> None:
    open_server.reset()
    open_server.client(api_key="client-secret").chat.completions.create(model=model, messages=HELLO)
    assert open_server.log.headers
    assert {h["authorization"] for h in open_server.log.headers} == {"Bearer client-secret"}


def test_client_bearer_forwarded_when_streaming(open_server: Stack) -> None:
    open_server.reset()
    list(
        open_server.client(api_key="client-secret").chat.completions.create(
            model="fake-model", messages=HELLO, stream=True
        )
    )
    assert [h["authorization"] for h in open_server.log.headers] == ["Bearer client-secret"]


def test_no_bearer_sends_none_upstream(open_server: Stack) -> None:
    open_server.reset()
    with open_server.http() as http:
        assert http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}).status_code == 200
    assert "authorization" not in open_server.log.headers[0]


def test_server_upstream_key_wins(server_key: Stack) -> None:
    server_key.reset()
    server_key.client(api_key="client-secret").chat.completions.create(model="fake-model", messages=HELLO)
    list(
        server_key.client(api_key="client-secret").chat.completions.create(
            model="fake-model", messages=HELLO, stream=True
        )
    )
    assert [h["authorization"] for h in server_key.log.headers] == ["Bearer upstream-secret"] * 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/responses", {"model": "fake-model", "input": "hi"}),
        ("POST", "/v1/responses", {"model": "fake-model", "input": "hi", "stream": True}),
        ("GET", "/v1/responses/resp_x", None),
        ("POST", "/v1/completions", {"model": "fake-model", "prompt": "hi"}),
        ("POST", "/v1/embeddings", {"model": "fake-model", "input": "hi"}),
    ],
)
def test_the_other_openai_routes_need_the_key_and_do_not_forward_it(
    locked: Stack, method: str, path: str, body: dict | None
) -> None:
    locked.reset()
    with locked.http() as http:
        check_401(http.request(method, path, json=body, headers={"authorization": "Bearer wrong"}))
        assert locked.log.bodies == []
        ok = http.request(method, path, json=body, headers={"authorization": "Bearer k"})
    assert ok.status_code == (404 if method == "GET" else 200), ok.text
    assert all("authorization" not in headers for headers in locked.log.headers)
