"""The proxy end to end with the official openai client: three providers from a YAML file, each a real
HTTP server on loopback that a test can make fail (500), answer 429, hang past its timeout, and
recover; every call of a run goes through them (approaches with several calls included), and each
attempt's provider is recorded in the run's upstream calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from api_stack import Stack, start_stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from upstream import ServerThread

from optigraph.api.app import create_app
from optigraph.config import Settings
from optigraph.core.cost import evaluate
from optigraph.engine.registry import builtin_registry

HANG_GUARD_S = 60.0  # a hung provider lets its call go after this (a guard, not a measure)


@dataclass
class Provider:
    """A provider the test controls: `mode` is ok, 500, 429 or hang; `hits` counts its calls."""

    name: str
    mode: str = "ok"
    hits: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    keys: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    hold_until: int = 0  # hold ok calls until this many are in flight once (proof of concurrency)

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = orjson.loads(await request.body())
            self.hits += 1
            self.keys.append(request.headers.get("authorization"))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.mode in ("500", "429"):
                    error = {"error": {"message": f"{self.name} says {self.mode}", "type": "server_error"}}
                    return Response(orjson.dumps(error), status_code=int(self.mode), media_type="application/json")
                if self.mode == "hang":
                    for _ in range(int(HANG_GUARD_S / 0.01)):
                        if self.release.is_set():
                            break
                        await asyncio.sleep(0.01)
                for _ in range(int(HANG_GUARD_S / 0.005)):
                    if self.in_flight >= self.hold_until:
                        self.hold_until = 0  # the gate stays open once it has filled
                        break
                    await asyncio.sleep(0.005)
                text = f"{self.name}: " + str(body["messages"][-1]["content"])
            finally:
                self.in_flight -= 1
            if body.get("stream"):
                chunk = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                }
                sse = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
                return Response(sse, media_type="text/event-stream")
            answer = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    for i in range(int(body.get("n") or 1))
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            return Response(orjson.dumps(answer), media_type="application/json")

        async def models(request: Request) -> Response:
            if self.mode != "ok":
                return Response(b'{"error": "down"}', status_code=503, media_type="application/json")
            return Response(orjson.dumps({"data": [{"id": "fake-model", "object": "model"}]}))

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


CONFIG = """
providers:
  - name: a
    base_url: {a}/v1
    api_key_env: PROXY_TEST_A_KEY
    weight: 3
    timeout_s: {a_timeout}
  - name: b
    base_url: {b}/v1
    weight: 1
    timeout_s: 30
    max_concurrency: 2
  - name: c
    base_url: {c}/v1
    weight: 1
    models: [other-model]
retries: 2
backoff_s: 0
cooldown_s: {cooldown}
health_check_interval_s: 0
"""


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, Provider]]:
    found = {name: Provider(name) for name in "abc"}
    with ServerThread(found["a"].app()) as a, ServerThread(found["b"].app()) as b, ServerThread(found["c"].app()) as c:
        for p, server in zip(found.values(), (a, b, c)):
            p.url = server.url  # type: ignore[attr-defined]
        yield found
        for p in found.values():
            p.release.set()


def write_config(tmp: Path, providers: dict[str, Provider], cooldown: float, a_timeout: float = 30.0) -> Path:
    path = tmp / "providers.yaml"
    urls = {n: p.url for n, p in providers.items()}  # type: ignore[attr-defined]
    path.write_text(CONFIG.format(cooldown=cooldown, a_timeout=a_timeout, **urls))
    return path


@contextlib.contextmanager
def proxy_stack(db: Path, config: Path) -> Iterator[Stack]:
    """optigraph whose only upstream is the proxy (no base URL), on a SQLite file."""
    settings = Settings(base_url=None, proxy_config=config, db_url=f"sqlite:///{db}", default_model="fake-model")
    with ServerThread(create_app(settings)) as server:
        yield Stack(server=server, settings=settings, db_path=db)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, providers: dict[str, Provider]) -> Iterator[Stack]:
    """The proxy as the server's upstream; failed providers cool down at once (cooldown 0)."""
    tmp = tmp_path_factory.mktemp("proxy")
    mp = pytest.MonkeyPatch()
    mp.setenv("PROXY_TEST_A_KEY", "key-of-a")
    with proxy_stack(tmp / "p.db", write_config(tmp, providers, cooldown=0)) as s:
        yield s
    mp.undo()


@pytest.fixture(autouse=True)
def fresh(providers: dict[str, Provider]) -> Iterator[None]:
    for p in providers.values():
        p.mode, p.hits, p.max_in_flight, p.hold_until = "ok", 0, 0, 0
        p.keys.clear()
        p.release.clear()
    yield
    for p in providers.values():
        p.release.set()


def ask(stack: Stack, model: str = "none-fake-model", **kw: Any) -> Any:
    return stack.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **kw)


def backends_of(stack: Stack, response: Any) -> list[tuple[str, str]]:
    run_id = response.model_extra["optigraph"]["run_id"]
    stack.run(run_id)
    return [(c["backend"], c["status"]) for c in stack.calls(run_id)]


def test_calls_are_spread_by_weight_and_recorded_with_their_provider(
    stack: Stack, providers: dict[str, Provider]
) -> None:
    seen = [backends_of(stack, ask(stack))[0][0] for _ in range(8)]
    assert sorted(seen) == ["proxy:a"] * 6 + ["proxy:b"] * 2  # weights 3 : 1; c does not serve this model
    assert seen[:4].count("proxy:b") == 1  # smooth: b's turn comes within every four calls
    assert providers["a"].keys[0] == "Bearer key-of-a"  # a's own key, from its variable
    assert providers["b"].keys[0] == "Bearer client-key"  # no key configured: the client's is forwarded


def test_a_500_fails_over_to_the_next_provider(stack: Stack, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "500"
    responses = [ask(stack) for _ in range(3)]
    assert all(r.choices[0].message.content == "b: hi" for r in responses)
    rows = [backends_of(stack, r) for r in responses]
    assert [("proxy:a", "error"), ("proxy:b", "ok")] in rows  # the failed attempt is recorded under a
    assert all(row[-1] == ("proxy:b", "ok") for row in rows)
    providers["a"].mode = "ok"  # recovers: with no cooldown, a gets its share again
    seen = [backends_of(stack, ask(stack))[0][0] for _ in range(4)]
    assert seen.count("proxy:a") == 3


def test_a_429_fails_over(stack: Stack, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "429"
    rows = [backends_of(stack, ask(stack)) for _ in range(4)]
    assert all(row[-1] == ("proxy:b", "ok") for row in rows)
    failed = [row[0] for row in rows if len(row) == 2]
    assert failed and all(f == ("proxy:a", "error") for f in failed)
    providers["a"].mode = "ok"
    assert all(c["status"] == "ok" for c in stack.calls(ask(stack).model_extra["optigraph"]["run_id"]))


def test_a_provider_that_hangs_past_its_timeout_fails_over(tmp_path: Path, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "hang"  # held until the test ends: only a's timeout (0.5 s) lets the call go on
    with proxy_stack(tmp_path / "h.db", write_config(tmp_path, providers, cooldown=0, a_timeout=0.5)) as s:
        responses = [ask(s) for _ in range(2)]
        for r in responses:
            s.run(r.model_extra["optigraph"]["run_id"])
        calls = [s.calls(r.model_extra["optigraph"]["run_id"]) for r in responses]
    assert [r.choices[0].message.content for r in responses] == ["b: hi", "b: hi"]
    hung = [c for run in calls for c in run if c["backend"] == "proxy:a"]
    assert hung and all(c["status"] == "error" and "timed out" in c["error"] for c in hung)
    assert all(run[-1]["backend"] == "proxy:b" and run[-1]["status"] == "ok" for run in calls)


def test_when_every_provider_fails_the_client_gets_a_502_after_the_retries(
    stack: Stack, providers: dict[str, Provider]
) -> None:
    providers["a"].mode = providers["b"].mode = "500"
    with pytest.raises(openai.InternalServerError) as caught:
        ask(stack)
    assert caught.value.status_code == 502
    assert providers["a"].hits + providers["b"].hits == 3  # the first attempt and 2 retries
    assert providers["a"].hits >= 1 and providers["b"].hits >= 1  # each retry went to the next provider


def test_every_call_of_an_approach_goes_through_the_providers(stack: Stack, providers: dict[str, Provider]) -> None:
    bon = builtin_registry().get("bon")
    response = ask(stack, model="bon-fake-model")
    rows = backends_of(stack, response)
    assert len(rows) == evaluate(bon.calls, bon.validate_params({}))
    assert {b for b, _ in rows} == {"proxy:a", "proxy:b"} and all(s == "ok" for _, s in rows)


async def test_a_provider_never_takes_more_than_its_concurrency(stack: Stack, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "500"  # everything lands on b (max_concurrency 2)
    providers["b"].hold_until = 2  # b holds its calls until two are in flight: the limit is reached
    client = stack.aclient()
    responses = await asyncio.gather(
        *(
            client.chat.completions.create(model="none-fake-model", messages=[{"role": "user", "content": "hi"}])
            for _ in range(6)
        )
    )
    assert [r.choices[0].message.content for r in responses] == ["b: hi"] * 6
    assert providers["b"].max_in_flight == 2


def test_streaming_fails_over_before_the_first_chunk(stack: Stack, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "500"
    providers["b"].mode = "500"
    providers["c"].mode = "ok"
    with pytest.raises(openai.APIError):
        list(ask(stack, stream=True))
    providers["b"].mode = "ok"
    text = "".join(c.choices[0].delta.content or "" for c in ask(stack, stream=True) if c.choices)
    assert text in ("b: hi", "a: hi") and providers["b"].hits >= 1


def test_models_lists_what_the_providers_serve(stack: Stack) -> None:
    ids = {m.id for m in stack.client().models.list().data}
    assert {"fake-model", "other-model"} <= ids


def test_health_shows_each_provider(stack: Stack, providers: dict[str, Provider]) -> None:
    providers["a"].mode = "500"
    ask(stack)
    with stack.http() as http:
        body = http.get("/health").json()
    text = orjson.dumps(body).decode()
    assert '"proxy:a"' in text and '"proxy:b"' in text and '"failures"' in text


def test_the_proxy_plugin_sends_a_run_through_the_providers_beside_a_base_url(
    tmp_path: Path, providers: dict[str, Provider]
) -> None:
    with start_stack(
        tmp_path / "q.db", proxy_config=write_config(tmp_path, providers, 0), default_model="fake-model"
    ) as s:
        plain = ask(s, model="bon-fake-model")
        assert {b for b, _ in backends_of(s, plain)} == {"openai"}
        proxied = ask(s, model="proxy&bon-fake-model")
        rows = backends_of(s, proxied)
        assert {b for b, _ in rows} == {"proxy:a", "proxy:b"} and len(rows) == 4  # bon: 1 + n calls
        detail = s.http().get(f"/v1/runs/{proxied.model_extra['optigraph']['run_id']}").json()
        assert "proxy: providers a (weight 3, healthy), b (weight 1, healthy), c" in orjson.dumps(detail).decode()
        with pytest.raises(openai.BadRequestError) as caught:
            ask(s, model="proxy&none-fake-model", extra_body={"optillm_params": {"proxy": {"weight": 2}}})
        assert caught.value.body["code"] == "invalid_approach_parameter"
    with start_stack(tmp_path / "r.db", default_model="fake-model") as bare:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(bare, model="proxy&none-fake-model")
        assert "--proxy-config" in caught.value.body["message"]


def test_a_resumed_proxy_run_goes_through_the_providers_again(tmp_path: Path, providers: dict[str, Provider]) -> None:
    with start_stack(
        tmp_path / "s.db", proxy_config=write_config(tmp_path, providers, 0), default_model="fake-model"
    ) as s:
        providers["a"].mode = providers["b"].mode = "500"
        with s.http() as http:
            r = http.post(
                "/v1/chat/completions",
                json={"model": "proxy&none-fake-model", "messages": [{"role": "user", "content": "hi"}]},
            )
        run_id = r.headers["x-optigraph-run-id"]
        assert r.status_code == 502 and s.run(run_id)["status"] == "failed"
        providers["a"].mode = providers["b"].mode = "ok"
        with s.http() as http:
            r = http.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] in ("a: hi", "b: hi")
        s.run(run_id)
        rows = [(c["backend"], c["status"]) for c in s.calls(run_id)]
        assert rows[-1][1] == "ok" and rows[-1][0] in ("proxy:a", "proxy:b")
        assert {b for b, _ in rows} == {"proxy:a", "proxy:b"} and s.log.bodies == []  # never the base URL
