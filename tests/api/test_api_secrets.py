"""Provider keys never leave optigraph except towards their upstream: after runs that used a key,
including an upstream error that echoes the key back, the key is in no response, no log record, and
nowhere in the database file (runs, calls, checkpoints)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from api_stack import start_stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from upstream import ServerThread

SERVER_KEY = "sk-provider-S3CRET-0123456789abcdef"
CLIENT_KEY = "sk-client-OWN-9876543210fedcba"


def echoing_upstream() -> Starlette:
    """An upstream that answers normally, except that it echoes the key it was sent in its error for
    the prompt `fail` (as some providers do: "incorrect API key provided: sk-...")."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        text = body["messages"][-1]["content"]
        if text == "fail":
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {sent}"}}, status_code=401)
        usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        message = {"role": "assistant", "content": f"echo: {text}"}
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(echoing_upstream()) as up:
        yield up


def database_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


@pytest.mark.parametrize(
    ("settings", "bearer", "secret"),
    [({"upstream_api_key": SERVER_KEY}, None, SERVER_KEY), ({}, CLIENT_KEY, CLIENT_KEY)],
    ids=["server-key", "forwarded-client-key"],
)
def test_a_provider_key_appears_nowhere(
    upstream: ServerThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    settings: dict,
    bearer: str | None,
    secret: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    db_path = tmp_path / "s.db"
    answers: list[str] = []
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    with start_stack(db_path, base_url=upstream.url + "/v1", default_model="m", **settings) as s:
        with s.http(headers=headers) as http:
            for model in ("m", "none&none-m"):
                for text in ("hello", "fail"):
                    for stream in (False, True):
                        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
                        r = http.post("/v1/chat/completions", json=body)
                        answers.append(r.text)
                        run_id = r.headers["x-optigraph-run-id"]
                        s.run(run_id)
                        answers += [http.get(f"/v1/runs/{run_id}").text, http.get(f"/ui/runs/{run_id}").text]
                        if text == "fail":
                            assert "Incorrect API key provided: [redacted]" in r.text
            answers.append(http.get("/v1/runs", params={"limit": 1000}).text)
    assert any("[redacted]" in a for a in answers)  # the echoed error reached the client, without the key
    assert not [a for a in answers if secret in a]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args}" for r in caplog.records)
    assert secret not in logged
    assert secret.encode() not in database_bytes(db_path)
    assert b"Incorrect API key provided" in database_bytes(db_path)  # the error was stored, redacted
    assert (
        httpx.post(
            upstream.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "fail"}]},
            headers={"authorization": f"Bearer {secret}"},
        ).text.count(secret)
        == 1
    )
