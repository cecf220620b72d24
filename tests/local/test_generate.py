"""Standard generation through LocalBackend on the tiny model: seeds, n, greedy, stop sequences,
max_tokens, streaming, usage, chat templates, context limits, logprobs, cancellation and an event loop
that stays free while the model works. References are the tiny model run directly."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import (
    TinyModel,
    byte_level_chars,
    copy_model,
    direct_greedy,
    last_logits,
    token_id,
)

from optigraph.backends.local import LocalBackend
from optigraph.errors import InvalidRequest
from optigraph.local.sampling import Sampling, choose, filtered_probs, make_generator
from optigraph.local.text import Detokenizer, decode, find_stop, held_back

QUESTION = [{"role": "user", "content": "What is two plus two?"}]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model(tiny: TinyModel) -> str:
    return str(tiny.path)


@pytest.fixture(scope="module")
def adapted(tiny: TinyModel) -> str:
    """base+lora-a+lora-b: its greedy path (lora-b) runs to the token limit without an end of sequence."""
    return f"{tiny.path}+lora-a+lora-b"


@pytest.fixture(scope="module")
def prompt(tiny_lm: Any) -> list[int]:
    return tiny_lm.encode_chat(QUESTION)


def texts(response: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] for c in response["choices"]]


async def chunks_of(backend: LocalBackend, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c async for c in backend.stream({**body, "stream": True})]


def streamed(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice index: its text, finish reason, logprobs entries and whether its first delta had the role."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            seen = out.setdefault(choice["index"], {"text": "", "finish": None, "entries": [], "role": None})
            if seen["role"] is None:
                seen["role"] = choice["delta"].get("role")
            assert seen["finish"] is None, "nothing comes after a choice's finish chunk"
            seen["text"] += choice["delta"].get("content") or ""
            seen["finish"] = choice["finish_reason"]
            if choice.get("logprobs"):
                seen["entries"] += choice["logprobs"]["content"]
    return out


# ---- sampling, seeds, n ----------------------------------------------------------------------------


async def test_a_seed_repeats_its_samples_and_another_seed_differs(tiny_backend: LocalBackend, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "temperature": 1.0, "max_tokens": 8, "n": 3, "seed": 7}
    first, again = await tiny_backend.complete(body), await tiny_backend.complete(body)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts(first) == texts(again)
    assert len(set(texts(first))) > 1, "the n samples of one request differ"
    other = await tiny_backend.complete({**body, "seed": 8})
    assert texts(other) != texts(first)


async def test_greedy_n_gives_identical_choices_computed_once(
    tiny_backend: LocalBackend, model: str, tiny_lm: Any, prompt: list[int], row_counter: Any
) -> None:
    result = await tiny_backend.complete(
        {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 10, "n": 3}
    )
    assert len(set(texts(result))) == 1 and len(result["choices"]) == 3
    assert set(row_counter.rows) == {1}, f"greedy n=3 runs one row, not {row_counter.rows}"
    reference = direct_greedy(tiny_lm.model, prompt, 10, eos=next(iter(tiny_lm.eos_ids)))
    assert texts(result)[0] == decode(tiny_lm.tokenizer, [t for t in reference if t not in tiny_lm.eos_ids])
    assert result["usage"]["completion_tokens"] == 3 * len([t for t in reference if t not in tiny_lm.eos_ids])

    row_counter.rows.clear()
    await tiny_backend.complete(
        {"model": model, "messages": QUESTION, "temperature": 1, "max_tokens": 3, "n": 3, "seed": 1}
    )
    assert row_counter.rows[0] == 1, "sampled choices share one prefill of their prompt"
    assert max(row_counter.rows[1:]) == 3


async def test_top_p_zero_is_greedy(tiny_backend: LocalBackend, model: str) -> None:
    greedy = await tiny_backend.complete({"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 8})
    top_p = await tiny_backend.complete({"model": model, "messages": QUESTION, "top_p": 0, "max_tokens": 8, "seed": 3})
    assert texts(top_p) == texts(greedy)


# ---- stop sequences and limits ------------------------------------------------------------------------


async def test_a_stop_sequence_cuts_the_text(tiny_backend: LocalBackend, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 40}
    full = await tiny_backend.complete(body)
    text = texts(full)[0]
    stop = re.findall(r"[A-Za-z][A-Za-z ]", text)[1]  # two plain characters well inside the greedy output
    cut = text.index(stop)
    assert cut > 0
    result = await tiny_backend.complete({**body, "stop": ["never appears", stop]})
    assert texts(result) == [text[:cut]]
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
    # streamed, the stop sequence is held back and never sent
    got = streamed(await chunks_of(tiny_backend, {**body, "stop": stop}))
    assert got[0]["text"] == text[:cut] and got[0]["finish"] == "stop"


async def test_max_tokens_ends_with_length(tiny_backend: LocalBackend, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "temperature": 0}
    full = await tiny_backend.complete({**body, "max_tokens": 30})
    for key in ("max_tokens", "max_completion_tokens"):
        result = await tiny_backend.complete({**body, key: 5, "logprobs": True})
        choice = result["choices"][0]
        assert choice["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 5 == len(choice["logprobs"]["content"])
        assert texts(full)[0].startswith(choice["message"]["content"])


async def test_usage_is_exact_and_the_chat_template_is_used(
    tiny_backend: LocalBackend, model: str, tiny_lm: Any
) -> None:
    result = await tiny_backend.complete(
        {"model": model, "messages": QUESTION, "temperature": 1, "seed": 2, "n": 3, "max_tokens": 7, "logprobs": True}
    )
    templated = tiny_lm.tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert tiny_lm.tokenizer.decode(templated).endswith("<|im_end|>\n<|im_start|>assistant\n")
    usage = result["usage"]
    assert usage["prompt_tokens"] == len(templated)
    per_choice = [len(c["logprobs"]["content"]) for c in result["choices"]]
    assert usage["completion_tokens"] == sum(per_choice)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    for choice, tokens in zip(result["choices"], per_choice):
        assert (tokens == 7) == (choice["finish_reason"] == "length")


async def test_without_a_chat_template_role_lines_are_the_prompt(tiny: TinyModel, tiny_lm: Any, tmp_path: Path) -> None:
    plain = copy_model(tiny.path, tmp_path / "plain", chat_template=False)
    backend = LocalBackend(str(plain))
    try:
        result = await backend.complete(
            {"messages": [{"role": "system", "content": "Be brief."}, *QUESTION], "temperature": 0, "max_tokens": 6}
        )
    finally:
        backend.worker.close()
    text = "<|im_start|>system: Be brief.\nuser: What is two plus two?\nassistant: "  # bos, then role lines
    prompt = tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert result["usage"]["prompt_tokens"] == len(prompt)
    reference = direct_greedy(tiny_lm.model, prompt, 6, eos=next(iter(tiny_lm.eos_ids)))  # same weights
    assert texts(result)[0] == decode(tiny_lm.tokenizer, [t for t in reference if t not in tiny_lm.eos_ids])


async def test_a_prompt_longer_than_the_context_is_rejected(tiny_backend: LocalBackend, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "two " * 1100}], "max_tokens": 4}
    with pytest.raises(InvalidRequest) as caught:
        await tiny_backend.complete(body)
    assert caught.value.code == "context_length_exceeded" and caught.value.status == 400
    assert caught.value.param == "messages"
    stream = tiny_backend.stream({**body, "stream": True})
    with pytest.raises(InvalidRequest):  # before any chunk
        await stream.__anext__()


async def test_generation_stops_at_the_end_of_the_context(tiny_backend: LocalBackend, model: str, tiny_lm: Any) -> None:
    words = 1
    while len(tiny_lm.encode_chat([{"role": "user", "content": "two" + " two" * words}])) < tiny_lm.context - 3:
        words += 1
    content = "two" + " two" * words
    room = tiny_lm.context - len(tiny_lm.encode_chat([{"role": "user", "content": content}]))
    assert 0 < room <= 3
    result = await tiny_backend.complete(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": 50,
            "logprobs": True,
        }
    )
    tokens = result["usage"]["completion_tokens"]
    assert tokens == len(result["choices"][0]["logprobs"]["content"]) <= room
    assert result["choices"][0]["finish_reason"] == ("length" if tokens == room else "stop")


# ---- streaming ---------------------------------------------------------------------------------------


async def test_streamed_text_equals_the_complete_text_for_a_seed(tiny_backend: LocalBackend, model: str) -> None:
    body = {
        "model": model,
        "messages": QUESTION,
        "temperature": 1.0,
        "seed": 11,
        "max_tokens": 24,
        "stream_options": {"include_usage": True},
    }
    whole = await tiny_backend.complete(body)
    chunks = await chunks_of(tiny_backend, body)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    got = streamed(chunks[:-1])
    assert got[0]["role"] == "assistant"
    assert got[0]["text"] == texts(whole)[0]
    assert got[0]["finish"] == whole["choices"][0]["finish_reason"]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 3, (
        "text arrives in pieces as it is generated"
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


async def test_streaming_n_sends_every_choice(tiny_backend: LocalBackend, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "temperature": 1.0, "seed": 5, "max_tokens": 10, "n": 3}
    whole = await tiny_backend.complete(body)
    got = streamed(await chunks_of(tiny_backend, body))
    assert sorted(got) == [0, 1, 2]
    assert [got[i]["text"] for i in range(3)] == texts(whole)
    assert [got[i]["finish"] for i in range(3)] == [c["finish_reason"] for c in whole["choices"]]
    assert all(got[i]["role"] == "assistant" for i in range(3))
    # greedy: one row, every index still gets its chunks
    greedy = streamed(await chunks_of(tiny_backend, {**body, "temperature": 0, "n": 2}))
    assert sorted(greedy) == [0, 1] and greedy[0]["text"] == greedy[1]["text"] != ""


# ---- logprobs ------------------------------------------------------------------------------------------


def check_entries(tiny_lm: Any, prompt: list[int], entries: list[dict[str, Any]], top: int) -> list[int]:
    """Each entry against a direct forward pass of the prompt plus the tokens before it; returns the ids."""
    ids: list[int] = []
    for entry in entries:
        token = token_id(tiny_lm.tokenizer, entry)
        logp = torch.log_softmax(last_logits(tiny_lm.model, prompt + ids), dim=-1)
        assert abs(entry["logprob"] - float(logp[token])) < TOLERANCE
        assert entry["bytes"] == token_bytes(tiny_lm.tokenizer, token)
        tops = entry["top_logprobs"]
        assert len(tops) == top
        values = [t["logprob"] for t in tops]
        assert values == sorted(values, reverse=True) and all(values[0] >= v for v in values)
        expected = torch.topk(logp, top)
        assert [token_id(tiny_lm.tokenizer, t) for t in tops] == expected.indices.tolist()
        torch.testing.assert_close(torch.tensor(values), expected.values, atol=TOLERANCE, rtol=0)
        for t in tops:
            assert t["bytes"] == token_bytes(tiny_lm.tokenizer, token_id(tiny_lm.tokenizer, t))
        ids.append(token)
    return ids


def token_bytes(tokenizer: Any, token: int) -> list[int]:
    """A token's bytes from its vocabulary piece (byte-level), or its text for a special token."""
    piece = tokenizer.convert_ids_to_tokens(token)
    if token in tokenizer.all_special_ids:
        return list(piece.encode("utf-8"))
    chars = byte_level_chars()
    return [chars[c] for c in piece]


async def test_logprobs_are_the_model_log_softmax(
    tiny_backend: LocalBackend, model: str, tiny_lm: Any, prompt: list[int]
) -> None:
    result = await tiny_backend.complete(
        {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 12, "logprobs": True, "top_logprobs": 3}
    )
    choice = result["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == result["usage"]["completion_tokens"] == 12
    ids = check_entries(tiny_lm, prompt, entries, 3)
    assert ids == direct_greedy(tiny_lm.model, prompt, 12)
    assert all(e["logprob"] == e["top_logprobs"][0]["logprob"] for e in entries)  # greedy: the top token
    assert choice["message"]["content"] == decode(tiny_lm.tokenizer, ids)
    assert any(e["token"].startswith("bytes:") for e in entries), "the tiny model emits partial characters"


async def test_logprobs_of_samples_are_before_temperature(
    tiny_backend: LocalBackend, model: str, tiny_lm: Any, prompt: list[int]
) -> None:
    result = await tiny_backend.complete(
        {
            "model": model,
            "messages": QUESTION,
            "temperature": 0.7,
            "seed": 4,
            "n": 2,
            "max_tokens": 8,
            "logprobs": True,
            "top_logprobs": 2,
        }
    )
    for choice in result["choices"]:
        ids = check_entries(tiny_lm, prompt, choice["logprobs"]["content"], 2)
        assert decode(tiny_lm.tokenizer, ids) == choice["message"]["content"]
    without_top = await tiny_backend.complete(
        {"model": model, "messages": QUESTION, "max_tokens": 3, "seed": 4, "logprobs": True}
    )
    assert [e["top_logprobs"] for e in without_top["choices"][0]["logprobs"]["content"]] == [[], [], []]
    plain = await tiny_backend.complete({"model": model, "messages": QUESTION, "max_tokens": 3, "seed": 4})
    assert plain["choices"][0]["logprobs"] is None


async def test_streamed_logprobs_equal_the_complete_ones(tiny_backend: LocalBackend, model: str) -> None:
    body = {
        "model": model,
        "messages": QUESTION,
        "temperature": 0,
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = await tiny_backend.complete(body)
    chunks = await chunks_of(tiny_backend, body)
    carrying = [c for c in chunks if c["choices"][0]["logprobs"] and c["choices"][0]["logprobs"]["content"]]
    assert len(carrying) >= 3, "entries arrive with the text they produced"
    got = streamed(chunks)
    assert got[0]["entries"] == whole["choices"][0]["logprobs"]["content"]
    assert got[0]["text"] == whole["choices"][0]["message"]["content"]


# ---- cancellation and the event loop -----------------------------------------------------------------------


async def test_closing_a_stream_stops_its_generation(
    tiny_backend: LocalBackend, adapted: str, row_counter: Any
) -> None:
    long = {"model": adapted, "messages": QUESTION, "temperature": 0, "max_tokens": 1000}
    stream = tiny_backend.stream({**long, "stream": True})
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 3:
            break
    await stream.aclose()
    assert all(c["choices"][0]["finish_reason"] is None for c in received)
    short = await tiny_backend.complete({"model": adapted, "messages": QUESTION, "temperature": 0, "max_tokens": 2})
    assert short["usage"]["completion_tokens"] == 2
    await tiny_backend.run(lambda lm: None)  # after all earlier work on the worker: the count is final
    # the long generation would have taken 1000 forward passes; it stopped soon after the close
    assert len(row_counter.rows) < 300, f"{len(row_counter.rows)} forward passes: the generation went on"


async def test_closing_one_stream_leaves_its_batch_partner_going(tiny_backend: LocalBackend, adapted: str) -> None:
    body = {"model": adapted, "messages": QUESTION, "temperature": 0, "max_tokens": 40, "active_adapter": "lora-a"}
    expected = await tiny_backend.complete(body)
    before = tiny_backend.worker.batches

    async def leave_early() -> int:
        stream = tiny_backend.stream(
            {"model": adapted, "messages": QUESTION, "temperature": 0, "max_tokens": 1000, "stream": True}
        )
        count = 0
        async for _ in stream:
            count += 1
            if count == 2:
                break
        await stream.aclose()
        return count

    async def stay() -> dict[int, dict[str, Any]]:
        return streamed(await chunks_of(tiny_backend, body))

    left, stayed = await asyncio.gather(leave_early(), stay())
    assert tiny_backend.worker.batches == before + 1, "both streams ran in one batch"
    assert left == 2
    assert stayed[0]["text"] == expected["choices"][0]["message"]["content"]
    assert stayed[0]["finish"] == "length"


class LoopCheck:
    """At its fifth forward pass the generation waits until the event loop has answered: a generation that
    ran on (and so blocked) the event loop could never be answered. `guard_s` only ends such a hang."""

    def __init__(self, at_pass: int = 5, guard_s: float = 60.0) -> None:
        self.at_pass, self.guard_s = at_pass, guard_s
        self.passes = 0
        self.asking, self.answered = threading.Event(), threading.Event()
        self.stalled = False
        self.handle: Any = None

    def attach(self, lm: Any) -> None:
        model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model

        def hook(_module: Any, _args: Any) -> None:
            self.passes += 1
            if self.passes == self.at_pass:
                self.asking.set()
                self.stalled = not self.answered.wait(self.guard_s)

        self.handle = model.model.register_forward_pre_hook(hook)

    def detach(self, _lm: Any = None) -> None:
        self.handle.remove()


async def test_the_event_loop_keeps_running_during_a_generation(tiny_backend: LocalBackend, adapted: str) -> None:
    check = LoopCheck()
    await tiny_backend.run(check.attach)
    try:
        task = asyncio.ensure_future(
            tiny_backend.complete({"model": adapted, "messages": QUESTION, "temperature": 0, "max_tokens": 200})
        )
        while not task.done():
            await asyncio.sleep(0.01)
            if check.asking.is_set():
                check.answered.set()  # the loop runs while the generation waits mid-way
        result = task.result()
    finally:
        await tiny_backend.run(check.detach)
    assert result["usage"]["completion_tokens"] == 200
    assert check.passes > check.at_pass and check.answered.is_set() and not check.stalled


# ---- sampling and text helpers ------------------------------------------------------------------------------


def test_filtered_probs_cuts() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    probs = filtered_probs(logits, Sampling(top_k=2))
    assert (probs > 0).sum() == 2 and probs[0, :2].sum() == pytest.approx(1.0)
    full = torch.softmax(logits, -1)
    probs = filtered_probs(logits, Sampling(top_p=0.8))  # the top two hold 0.61+0.22 >= 0.8 of the mass
    assert (probs > 0).tolist() == [[True, True, False, False, False]]
    torch.testing.assert_close(probs[0, :2], full[0, :2] / full[0, :2].sum())
    probs = filtered_probs(logits, Sampling(min_p=0.2))  # tokens at least 0.2 x the top one's probability
    assert (probs > 0).tolist() == [[True, True, True, False, False]]
    cold = filtered_probs(logits, Sampling(temperature=0.5))
    torch.testing.assert_close(cold, torch.softmax(logits / 0.5, -1))
    assert choose(logits, Sampling(temperature=0), None).tolist() == [0]
    draws = [choose(logits, Sampling(), make_generator(9)).item() for _ in range(3)]
    assert len(set(draws)) == 1  # a seed repeats
    assert Sampling(temperature=0).greedy and Sampling(top_p=0).greedy and not Sampling().greedy


def test_stop_search_and_held_back_text() -> None:
    assert find_stop("abc STOP def", ["STOP"]) == 4
    assert find_stop("abc", []) == -1
    assert find_stop("xxSTOP", ["STOP", "xS"], since=4) == 1  # the earliest one that may have just completed
    assert held_back("answer: S", ["STOP"]) == 1 and held_back("answer: ST", ["STOP"]) == 2
    assert held_back("answer", ["STOP"]) == 0


def test_detokenizer_pieces_add_up_to_the_decoded_text(tiny_lm: Any) -> None:
    text = "naïve café — 4 € ok"
    ids = tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tiny_lm.tokenizer)
    pieces = [detok.add(t) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text == detok.text
    assert "" in pieces, "a token inside a multi-byte character waits for the rest of it"
    assert all("\ufffd" not in p for p in pieces)
