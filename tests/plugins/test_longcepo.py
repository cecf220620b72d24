"""The longcepo plugin in-process: a document over ten times the model's window, on a scripted model
that refuses any prompt over its window, answered from the one chunk in the middle that holds the
fact; map calls bounded by the concurrency; calls within the declared cost."""

from __future__ import annotations

import random
from typing import Any

import pytest
from engine_stack import ask, make_runner
from scripted import ScriptedBackend, last_user

from optigraph.core.cost import evaluate
from optigraph.core.messages import message_text
from optigraph.errors import InvalidRequest, UpstreamError
from optigraph.plugins.longcepo import SPEC
from optigraph.plugins.retrieval import estimate_tokens

WINDOW = 1000  # estimated tokens (characters / 4) the scripted model takes, its answer included
FACT = "The vault combination is 7-3-9-1."
QUESTION = "What is the vault combination?"
WORDS = ["river", "stone", "market", "evening", "garden", "letter", "window", "harbor", "winter", "candle"]


def document(tokens: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while estimate_tokens(" ".join(words)) < tokens:
        words.append(rng.choice(WORDS))
    middle = len(words) // 2
    return " ".join(words[:middle] + [FACT] + words[middle:])


def windowed(body: dict[str, Any]) -> Any:
    """The scripted model: a prompt over the window is refused, as a real server does."""
    used = sum(estimate_tokens(message_text(m)) for m in body["messages"]) + int(body.get("max_tokens") or 0)
    if used > WINDOW:
        return UpstreamError(f"prompt of {used} tokens is over the context window of {WINDOW}", upstream_status=400)
    prompt = last_user(body)
    if prompt.startswith("You will answer a question about a long document"):
        return "What numbers make up the vault combination?"
    if prompt.startswith("This is part"):
        return FACT if FACT in prompt else "NOTHING"
    if prompt.startswith("These notes were taken"):
        return " ".join(line for line in prompt.splitlines() if "7-3-9-1" in line) or "NOTHING"
    if prompt.startswith("Notes taken from a long document"):
        return "7-3-9-1" if "7-3-9-1" in prompt else "I do not know"
    return "unexpected prompt"


async def test_a_document_ten_times_the_window_is_answered_from_its_middle() -> None:
    backend = ScriptedBackend(windowed)
    runner = make_runner(backend)
    params = {"window_tokens": WINDOW, "answer_tokens": 100, "concurrency": 3}
    text = document(12 * WINDOW)
    response = await ask(
        runner,
        {
            "model": "longcepo&none-m",
            "messages": [{"role": "system", "content": text}, {"role": "user", "content": QUESTION}],
            "optillm_params": {"longcepo": params},
        },
    )
    assert response["choices"][0]["message"]["content"] == "7-3-9-1"
    refused = [b for b in backend.calls if windowed(b).__class__ is UpstreamError]
    assert refused == []  # no call went over the window
    maps = [b for b in backend.calls if last_user(b).startswith("This is part")]
    chunks = len(maps)
    assert chunks >= 12
    holding = [i for i, b in enumerate(maps) if FACT in last_user(b)]
    assert holding and 0 < holding[0] and holding[-1] < chunks - 1  # found in the middle, not at an end
    assert backend.max_in_flight <= 3  # the map calls' concurrency bound
    validated = SPEC.validate_params(params)
    # plan + one map per chunk + the wrapped answer; no merge was needed (one relevant note)
    assert len(backend.calls) == 1 + chunks + 1
    assert len(backend.calls) - 1 <= evaluate(SPEC.calls, validated)


async def test_many_relevant_notes_are_merged_until_they_fit() -> None:
    backend = ScriptedBackend(lambda body: _every_part_relevant(body))
    runner = make_runner(backend)
    params = {"window_tokens": WINDOW, "answer_tokens": 200, "concurrency": 2}
    response = await ask(
        runner,
        {
            "model": "longcepo&none-m",
            "messages": [{"role": "user", "content": document(8 * WINDOW) + "\n\n" + QUESTION}],
            "optillm_params": {"longcepo": params},
        },
    )
    merges = [b for b in backend.calls if last_user(b).startswith("These notes were taken")]
    maps = [b for b in backend.calls if last_user(b).startswith("This is part")]
    assert merges and len(merges) <= len(maps) - 1
    assert response["choices"][0]["message"]["content"] == "answered"
    assert len(backend.calls) - 1 <= evaluate(SPEC.calls, SPEC.validate_params(params))
    assert all(not isinstance(windowed_size(b), UpstreamError) for b in backend.calls)


def _every_part_relevant(body: dict[str, Any]) -> Any:
    refusal = windowed_size(body)
    if refusal is not None:
        return refusal
    prompt = last_user(body)
    if prompt.startswith("This is part"):
        return "relevant: " + " ".join(["detail"] * 150)  # ~190 tokens of notes per part
    if prompt.startswith("These notes were taken"):
        return "merged: " + " ".join(["detail"] * 100)
    return "answered"


def windowed_size(body: dict[str, Any]) -> UpstreamError | None:
    used = sum(estimate_tokens(message_text(m)) for m in body["messages"]) + int(body.get("max_tokens") or 0)
    return UpstreamError("over the window", upstream_status=400) if used > WINDOW else None


async def test_without_longcepo_the_model_refuses_the_document() -> None:
    backend = ScriptedBackend(windowed)
    runner = make_runner(backend, upstream_retries=0)
    body = {"model": "none-m", "messages": [{"role": "user", "content": document(12 * WINDOW) + "\n\n" + QUESTION}]}
    with pytest.raises(UpstreamError, match="over the context window"):
        await ask(runner, body)


async def test_a_short_conversation_passes_through_without_a_call() -> None:
    backend = ScriptedBackend(lambda body: "short answer")
    runner = make_runner(backend)
    response = await ask(runner, {"model": "longcepo&none-m", "messages": [{"role": "user", "content": QUESTION}]})
    assert response["choices"][0]["message"]["content"] == "short answer"
    assert [last_user(b) for b in backend.calls] == [QUESTION]


async def test_a_document_over_max_chunks_is_refused() -> None:
    backend = ScriptedBackend(windowed)
    runner = make_runner(backend)
    body = {
        "model": "longcepo&none-m",
        "messages": [{"role": "user", "content": document(20 * WINDOW) + "\n\n" + QUESTION}],
        "optillm_params": {"longcepo": {"window_tokens": WINDOW, "answer_tokens": 100, "max_chunks": 5}},
    }
    with pytest.raises(InvalidRequest, match="over max_chunks"):
        await ask(runner, body)
    assert backend.calls == []


@pytest.mark.parametrize(
    "params", [{"window_tokens": 100}, {"answer_tokens": 900, "window_tokens": 1000}, {"concurrency": 0}, {"x": 1}]
)
def test_bad_parameters_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        SPEC.validate_params(params)


def test_the_declared_cost_bounds_the_calls() -> None:
    defaults = SPEC.validate_params({})
    assert evaluate(SPEC.calls, defaults) == 128
    assert evaluate(SPEC.rounds, {**defaults, "max_chunks": 8, "concurrency": 4}) == 1 + 2 + 7
