"""LocalBackend on the tiny model: LoRA adapters per request (and several in one batch), request
checks, routing, and the whole server over real HTTP with the official openai client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tiny_model import TinyModel, direct_greedy, token_id

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread  # noqa: E402

from optigraph.backends.local import LocalBackend, parse_request  # noqa: E402
from optigraph.backends.router import Backends, is_local_model  # noqa: E402
from optigraph.config import Settings  # noqa: E402
from optigraph.errors import InvalidRequest, NotFound  # noqa: E402
from optigraph.local.text import decode  # noqa: E402

QUESTION = [{"role": "user", "content": "What is two plus two?"}]
STEPS = 10


@pytest.fixture(scope="module")
def adapted(tiny: TinyModel) -> str:
    return f"{tiny.path}+lora-a+lora-b"


@pytest.fixture(scope="module")
def references(tiny_peft: Any, tiny_lm: Any) -> dict[str, list[int]]:
    """The greedy tokens of QUESTION with each adapter, and with none, from the peft model run directly."""
    prompt = tiny_lm.encode_chat(QUESTION)
    eos = next(iter(tiny_lm.eos_ids))
    out = {}
    for adapter in ("lora-a", "lora-b"):
        tiny_peft.set_adapter(adapter)
        out[adapter] = direct_greedy(tiny_peft, prompt, STEPS, eos)
    with tiny_peft.disable_adapter():
        out["base"] = direct_greedy(tiny_peft, prompt, STEPS, eos)
    assert len({tuple(v) for v in out.values()}) == 3, "each adapter should change the greedy path"
    return out


def ids_of(tiny_lm: Any, response: dict[str, Any]) -> list[int]:
    return [token_id(tiny_lm.tokenizer, e) for e in response["choices"][0]["logprobs"]["content"]]


def greedy(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": STEPS, "logprobs": True, **extra}


# ---- adapters ------------------------------------------------------------------------------------------


async def test_the_last_named_adapter_is_active_by_default(
    tiny_backend: LocalBackend, adapted: str, tiny_lm: Any, references: dict[str, list[int]]
) -> None:
    result = await tiny_backend.complete(greedy(adapted))
    assert ids_of(tiny_lm, result) == references["lora-b"]
    assert result["choices"][0]["message"]["content"] == decode(tiny_lm.tokenizer, references["lora-b"])


@pytest.mark.parametrize(
    ("active", "expected"),
    [("lora-a", "lora-a"), ("lora-b", "lora-b"), ("none", "base"), ("base", "base"), ("path:lora-a", "lora-a")],
)
async def test_active_adapter_chooses_the_adapter(
    tiny_backend: LocalBackend,
    adapted: str,
    tiny: TinyModel,
    tiny_lm: Any,
    references: dict[str, list[int]],
    active: str,
    expected: str,
) -> None:
    name = str(tiny.adapters["lora-a"]) if active == "path:lora-a" else active
    result = await tiny_backend.complete(greedy(adapted, active_adapter=name))
    assert ids_of(tiny_lm, result) == references[expected]


async def test_a_model_without_adapters_is_the_base(
    tiny_backend: LocalBackend, tiny: TinyModel, adapted: str, tiny_lm: Any, references: dict[str, list[int]]
) -> None:
    await tiny_backend.complete(greedy(adapted, max_tokens=1))  # adapters loaded on the shared base model
    result = await tiny_backend.complete(greedy(str(tiny.path)))
    assert ids_of(tiny_lm, result) == references["base"]


async def test_concurrent_requests_with_different_adapters_share_one_batch(
    tiny_backend: LocalBackend, adapted: str, tiny_lm: Any, references: dict[str, list[int]], row_counter: Any
) -> None:
    await tiny_backend.complete(greedy(adapted, max_tokens=1))  # adapters loaded before counting
    row_counter.rows.clear()
    before = tiny_backend.worker.batches
    actives = ["lora-a", "none", "lora-b", None]
    results = await asyncio.gather(
        *(tiny_backend.complete(greedy(adapted, **({"active_adapter": a} if a else {}))) for a in actives)
    )
    assert tiny_backend.worker.batches == before + 1, "the four requests ran as one batch"
    assert max(row_counter.rows) == 4
    for result, expected in zip(results, ["lora-a", "base", "lora-b", "lora-b"]):
        assert ids_of(tiny_lm, result) == references[expected]


@pytest.fixture
def fresh_backend(tiny: TinyModel) -> Iterator[Any]:
    """Makes LocalBackends of their own on the tiny model (a fresh cache: no adapter loaded yet)."""
    made: list[LocalBackend] = []

    def make(**options: Any) -> LocalBackend:
        options.setdefault("batch_window_ms", 20)
        made.append(LocalBackend(str(tiny.path), models_dir=tiny.path.parent, **options))
        return made[-1]

    yield make
    for backend in made:
        backend.worker.close()


async def test_a_plain_request_shares_a_batch_with_the_one_loading_the_first_adapter(
    fresh_backend: Any, tiny: TinyModel, tiny_lm: Any, references: dict[str, list[int]]
) -> None:
    """The plain request is prepared while the model has no adapter yet; the next one loads lora-a."""
    backend = fresh_backend()
    await backend.warmup()
    before = backend.worker.batches
    plain, adapted = await asyncio.gather(
        backend.complete(greedy(str(tiny.path))), backend.complete(greedy(f"{tiny.path}+lora-a"))
    )
    assert backend.worker.batches == before + 1
    assert ids_of(tiny_lm, plain) == references["base"]
    assert ids_of(tiny_lm, adapted) == references["lora-a"]


async def test_requests_beyond_the_row_limit_wait_for_the_next_batch_in_order(
    fresh_backend: Any, tiny: TinyModel
) -> None:
    # a wide batch window: on a loaded machine the two gathered requests may reach the worker far apart
    backend = fresh_backend(max_batch_rows=4, batch_window_ms=1000)
    await backend.warmup()
    body = {"model": str(tiny.path), "messages": QUESTION, "temperature": 1, "seed": 1, "max_tokens": 4}
    before = backend.worker.batches
    pair = await asyncio.gather(*(backend.complete({**body, "n": 2}) for _ in range(2)))
    assert backend.worker.batches == before + 1, "2 + 2 rows fit one batch"
    assert [len(r["choices"]) for r in pair] == [2, 2]
    done: list[tuple[str, int]] = []

    async def one(name: str) -> dict[str, Any]:
        result = await backend.complete({**body, "n": 3})
        done.append((name, backend.worker.batches - before - 1))
        return result

    results = await asyncio.gather(*(one(name) for name in "ABCD"))
    assert done == [("A", 1), ("B", 2), ("C", 3), ("D", 4)], "3 + 3 rows do not fit: one batch each, in order"
    assert all(
        texts == [c["message"]["content"] for c in results[0]["choices"]]
        for texts in ([c["message"]["content"] for c in r["choices"]] for r in results)
    )


async def test_a_streamed_adapter_answer_equals_the_complete_one(tiny_backend: LocalBackend, adapted: str) -> None:
    body = greedy(adapted, active_adapter="lora-a", logprobs=False)
    whole = await tiny_backend.complete(body)
    pieces = [
        c["choices"][0]["delta"].get("content") or ""
        async for c in tiny_backend.stream({**body, "stream": True})
        if c["choices"]
    ]
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]


async def test_an_unknown_active_adapter_is_a_bad_request(
    tiny_backend: LocalBackend, tiny: TinyModel, adapted: str
) -> None:
    only_a = f"{tiny.path}+lora-a"
    for model, active in ((adapted, "lora-c"), (only_a, "lora-b"), (str(tiny.path), "lora-a")):
        with pytest.raises(InvalidRequest) as caught:
            await tiny_backend.complete(greedy(model, active_adapter=active))
        assert (caught.value.status, caught.value.param) == (400, "active_adapter")
    with pytest.raises(InvalidRequest) as caught:
        await tiny_backend.complete(greedy(adapted, active_adapter=3))
    assert caught.value.param == "active_adapter"


async def test_a_missing_adapter_directory_is_not_found(
    tiny_backend: LocalBackend, tiny: TinyModel, tmp_path: Path
) -> None:
    for adapter in ("lora-z", str(tmp_path / "lora-z")):
        with pytest.raises(NotFound) as caught:
            await tiny_backend.complete(greedy(f"{tiny.path}+{adapter}"))
        assert (caught.value.status, caught.value.code, caught.value.param) == (404, "adapter_not_found", "model")
    with pytest.raises(NotFound):
        await tiny_backend.complete(greedy("local/does-not-exist"))


# ---- request checks and routing ---------------------------------------------------------------------------


def test_request_checks() -> None:
    ok = {"messages": QUESTION}
    req = parse_request(
        {
            **ok,
            "logprobs": True,
            "top_logprobs": 5,
            "n": 3,
            "seed": 9,
            "stop": ["a", ""],
            "active_adapter": "lora-a",
            "temperature": 0.5,
            "top_p": 0.9,
        }
    )
    assert (req.logprobs, req.top_logprobs, req.n, req.seed, req.stop, req.active_adapter) == (
        True,
        5,
        3,
        9,
        ("a",),
        "lora-a",
    )
    assert (req.temperature, req.top_p, req.max_tokens, req.decoding) == (0.5, 0.9, None, None)
    assert {"logprobs", "top_logprobs", "n"} <= req.explicit
    bad = [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"n": 65}, "n"),
        ({"n": 0}, "n"),
        ({"active_adapter": 1}, "active_adapter"),
        ({"stop": [1]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": "x"}, "seed"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
    ]
    for extra, param in bad:
        with pytest.raises(InvalidRequest) as caught:
            parse_request({**ok, **extra})
        assert caught.value.param == param, extra


def test_decoding_choices_are_checked() -> None:
    ok = {"messages": QUESTION}
    assert parse_request({**ok, "decoding": "none"}).decoding is None
    for extra, param in (
        ({"decoding": "no-such-strategy"}, "decoding"),
        ({"decoding": "cot_decoding", "n": 2}, "n"),
        ({"decoding": "cot_decoding", "logprobs": True}, "logprobs"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            parse_request({**ok, **extra})
        assert caught.value.param == param and caught.value.status == 400
    req = parse_request({**ok, "decoding": "cot_decoding", "k": 3})
    assert req.decoding == "cot_decoding" and req.decoding_params is not None


def test_routing_of_model_names(tiny: TinyModel, tmp_path: Path) -> None:
    backends = Backends(Settings(local_model=str(tiny.path), db_url=f"sqlite:///{tmp_path / 'o.db'}"))
    try:
        assert is_local_model("local") and is_local_model("LOCAL") and not is_local_model("gpt-4o-mini")
        local, name = backends.for_model("gpt-4o-mini")  # no upstream: plain names are the default local model
        assert isinstance(local, LocalBackend) and name == str(tiny.path)
        assert backends.for_model(str(tiny.path)) == (local, str(tiny.path))  # the configured model, as written
        assert backends.for_model(f"local/{tiny.path}")[0] is local
        assert backends.for_model("openai/gpt-4o")[0] is backends.litellm
        for missing in (
            "local/does-not-exist",
            "someone/some-model",
            str(tmp_path / "nothing"),
            f"{tiny.path}+{tiny.adapters['lora-a']}",
            "local/tiny-llama",
        ):  # no models directory
            with pytest.raises(NotFound):
                backends.for_model(missing)
        with_dir = Backends(
            Settings(
                local_model="tiny-llama",
                local_models_dir=tiny.path.parent,
                local_max_models=3,
                local_dtype="bfloat16",
                local_batch_window_ms=7,
                local_max_batch_rows=9,
                db_url=f"sqlite:///{tmp_path / 'o.db'}",
            )
        )
        local = with_dir.local()
        assert with_dir.for_model("tiny-llama+lora-a") == (local, "tiny-llama+lora-a")
        assert local.default_spec.base.path == tiny.path.resolve() and local.models_dir == tiny.path.parent
        assert (local.cache.max_models, local.cache.dtype) == (3, "bfloat16")
        assert (local.worker.batch_window_s, local.worker.max_batch_rows) == (0.007, 9)
        asyncio.run(with_dir.aclose())
    finally:
        asyncio.run(backends.aclose())


def test_local_settings_are_checked(tiny: TinyModel) -> None:
    from pydantic import ValidationError

    for bad in (
        {"local_max_models": 0},
        {"local_dtype": "float8"},
        {"local_batch_window_ms": -1},
        {"local_max_batch_rows": 0},
    ):
        with pytest.raises(ValidationError):
            Settings(local_model=str(tiny.path), **bad)


async def test_list_models_and_status(tiny: TinyModel, tiny_backend: LocalBackend) -> None:
    await tiny_backend.warmup()
    assert tiny_backend.status == "ready"
    models = await tiny_backend.list_models()
    assert models[0] == {"id": str(tiny.path), "object": "model", "owned_by": "optigraph-local"}
    caps = tiny_backend.capabilities(str(tiny.path))
    assert caps.logprobs and caps.n_sampling and caps.streaming and caps.local


# ---- the server over HTTP ----------------------------------------------------------------------------------


def test_http_logprobs(client: openai.OpenAI, tiny: TinyModel, tiny_lm: Any) -> None:
    reply = client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 8
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in entries)
    ids = [token_id(tiny_lm.tokenizer, e.model_dump()) for e in entries]
    prompt = tiny_lm.encode_chat(QUESTION)
    assert ids == direct_greedy(tiny_lm.model, prompt, 8)
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.choices[0].message.content == decode(tiny_lm.tokenizer, ids)
    # "local" and any plain name are the default model
    again = client.chat.completions.create(model="local", messages=QUESTION, temperature=0, max_tokens=8)
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_http_streaming_and_n(client: openai.OpenAI, tiny: TinyModel) -> None:
    whole = client.chat.completions.create(model=str(tiny.path), messages=QUESTION, temperature=0, max_tokens=12)
    pieces: list[str] = []
    usage = None
    for chunk in client.chat.completions.create(
        model=str(tiny.path),
        messages=QUESTION,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 3 and "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    with_logprobs = client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=2
    )
    entries = []
    for chunk in client.chat.completions.create(
        model=str(tiny.path),
        messages=QUESTION,
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            entries += chunk.choices[0].logprobs.content
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in with_logprobs.choices[0].logprobs.content]
    assert len(entries) == 12

    two = client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, temperature=1, seed=3, n=2, max_tokens=6
    )
    assert [c.index for c in two.choices] == [0, 1]
    again = client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, temperature=1, seed=3, n=2, max_tokens=6
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(
        model=str(tiny.path), messages=QUESTION, temperature=1, seed=3, n=2, max_tokens=6, stream=True
    ):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert streamed == {0: two.choices[0].message.content, 1: two.choices[1].message.content}


def test_http_adapters(client: openai.OpenAI, tiny: TinyModel, tiny_lm: Any, references: dict[str, list[int]]) -> None:
    model = f"{tiny.path}+lora-a+lora-b"
    reply = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=STEPS, extra_body={"active_adapter": "lora-a"}
    )
    assert reply.choices[0].message.content == decode(tiny_lm.tokenizer, references["lora-a"])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=2, extra_body={"active_adapter": "lora-z"}
        )
    assert caught.value.body["param"] == "active_adapter"


def test_http_errors(client: openai.OpenAI, server: ServerThread, tiny: TinyModel) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="local/does-not-exist", messages=QUESTION, max_tokens=2)
    assert caught.value.status_code == 404 and caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{tiny.path}+/no/such/adapter", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=str(tiny.path), messages=QUESTION, max_tokens=2, extra_body={"decoding": "no-such-strategy"}
        )
    assert bad.value.status_code == 400 and bad.value.body["param"] == "decoding"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=str(tiny.path), messages=[{"role": "user", "content": "two " * 1100}], max_tokens=2
        )
    assert bad.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # an error before the first token is an HTTP error, streamed or not
        for _ in client.chat.completions.create(
            model=str(tiny.path), messages=[{"role": "user", "content": "two " * 1100}], max_tokens=2, stream=True
        ):
            pass


def test_http_tools_are_refused_by_name(client: openai.OpenAI, server: ServerThread) -> None:
    """The local model cannot call tools: a 400 naming the field, for the passthrough and for an approach
    (before any of its calls), streamed or not; a plain text format is fine (JSON formats: test_grammar.py)."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    runs_before = httpx.get(f"{server.url}/v1/runs?limit=1000", timeout=10).json()["data"]
    for extra, param in (
        ({"tools": tools}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
    ):
        for model in ("local", "bon-local"):
            for stream in (False, True):
                with pytest.raises(openai.BadRequestError) as caught:
                    reply = client.chat.completions.create(
                        model=model, messages=QUESTION, max_tokens=2, stream=stream, extra_body=extra
                    )
                    if stream:
                        list(reply)
                assert (caught.value.body["param"], caught.value.body["code"]) == (param, "unsupported_parameter")
                assert param in caught.value.body["message"]
    runs_after = httpx.get(f"{server.url}/v1/runs?limit=1000", timeout=10).json()["data"]
    assert [r["id"] for r in runs_after if r["expression"] != "none"] == [
        r["id"] for r in runs_before if r["expression"] != "none"
    ], "no approach run started"
    ok = client.chat.completions.create(
        model="local", messages=QUESTION, max_tokens=2, tool_choice="none", response_format={"type": "text"}
    )
    assert ok.usage.completion_tokens == 2


def test_health_lists_the_local_models(client: openai.OpenAI, server: ServerThread, tiny: TinyModel) -> None:
    client.chat.completions.create(model="local", messages=QUESTION, max_tokens=1)
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["local_model"] == "ready"
    [entry] = [m for m in health["local_models"] if m["id"] == str(tiny.path)]
    assert entry["path"] == str(tiny.path.resolve())
    assert set(entry) >= {"load_seconds", "resident_mib", "parameter_mib"}
    weights = (tiny.path / "model.safetensors").stat().st_size / 2**20
    assert weights - 0.2 < entry["parameter_mib"] < weights + 1  # adapters add a little, the file header less


def test_http_client_leaving_a_stream_frees_the_model(
    server: ServerThread, tiny: TinyModel, row_counter_type: Any
) -> None:
    """lora-b's greedy path runs to the token limit (1000 tokens: seconds); the client leaves after a few chunks."""
    model = f"{tiny.path}+lora-a+lora-b"
    local: LocalBackend = server.server.config.app.state.backends.local()
    counter = row_counter_type()
    # the worker settles on whichever loop asked: a loop of this thread's own is fine
    asyncio.run(local.run(counter.attach, model))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 1000, "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                for number, _ in enumerate(response.iter_lines()):
                    if number == 4:
                        break
            short = http.post("/v1/chat/completions", json={**body, "max_tokens": 2, "stream": False})
            assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2
        asyncio.run(local.run(lambda lm: None, model))  # after all earlier work on the worker: the count is final
    finally:
        asyncio.run(local.run(counter.detach, model))
    # running to its limit, the abandoned generation alone would have made 1000 forward passes
    assert len(counter.rows) < 300, f"{len(counter.rows)} forward passes: the abandoned generation went on"
