"""`n` > 1 (forwarded or emulated with concurrent calls) and composite expressions (`|`, `&`) over
real HTTP, with usage summed over every upstream call."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
from api_stack import Stack, fake_usage, last_user_text, start_stack

HELLO = [{"role": "user", "content": "hello there"}]


def streamed_choices(stream) -> tuple[dict[int, str], dict[int, str], list]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    chunks = list(stream)
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return texts, finish, chunks


# ---- n on an upstream that samples n in one call ----------------------------------------------


def test_n_forwarded_in_one_call(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="fake-model", messages=HELLO, n=3)
    r = raw.parse()
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == ["echo: hello there"] * 3
    assert len(stack.log.bodies) == 1 and stack.log.bodies[0]["n"] == 3
    assert r.model_extra["optigraph"]["upstream_calls"] == 1 and raw.headers["x-optigraph-upstream-calls"] == "1"
    assert r.usage.completion_tokens == 9  # the upstream's count for its three choices


def test_n_forwarded_streaming(stack: Stack) -> None:
    texts, finish, _ = streamed_choices(
        stack.client().chat.completions.create(model="fake-model", messages=HELLO, n=3, stream=True)
    )
    assert texts == {i: "echo: hello there" for i in range(3)}
    assert finish == {i: "stop" for i in range(3)}
    assert len(stack.log.bodies) == 1 and stack.log.bodies[0]["n"] == 3


def test_n_one_is_not_sent(stack: Stack) -> None:
    stack.client().chat.completions.create(model="fake-model", messages=HELLO, n=1)
    assert "n" not in stack.log.bodies[0]


# ---- n on an upstream that returns one choice per call (llama.cpp, Ollama...) -----------------


class Counter:
    """Answers `answer <k>` with k counting calls, so emulated choices are distinguishable."""

    def __init__(self) -> None:
        self.count = itertools.count()
        self.lock = threading.Lock()

    def __call__(self, body: dict, index: int) -> str:
        with self.lock:
            return f"answer {next(self.count)} to {last_user_text(body)}"


@pytest.fixture(scope="module")
def single_choice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("n") / "o.db", upstream={"n_support": False}) as s:
        yield s


@pytest.fixture
def no_n(single_choice: Stack) -> Iterator[Stack]:
    single_choice.reset()
    single_choice.script.fn = Counter()
    yield single_choice
    single_choice.reset()


def test_n_emulated_with_concurrent_calls(no_n: Stack) -> None:
    client = no_n.client()
    for learned in (False, True):  # the first request learns that the upstream ignores n; the second knows it
        no_n.reset()
        no_n.script.fn = Counter()
        # the first time, the n=3 try is answered alone, then the 2 missing choices together; then all 3
        no_n.log.hold_until = 3 if learned else 2
        r = client.chat.completions.create(model="fake-model", messages=HELLO, n=3, seed=7)
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert sorted(c.message.content for c in r.choices) == [f"answer {k} to hello there" for k in range(3)]
        assert all(c.finish_reason == "stop" for c in r.choices)
        assert r.model_extra["optigraph"]["upstream_calls"] == 3 == len(no_n.log.bodies)
        assert r.usage.total_tokens == 3 * (2 + 5)
        run = no_n.run(r.model_extra["optigraph"]["run_id"])
        assert run["calls"] == 3 and run["total_tokens"] == r.usage.total_tokens
        assert len(no_n.calls(run["id"])) == 3
        # every choice is sampled with its own seed (a shared one would repeat the same sample)
        assert sorted(b["seed"] for b in no_n.log.bodies) == [7, 8, 9]
        assert not no_n.log.stalled
    # the learned path sends n=1 calls, all in flight together
    assert [b.get("n") for b in no_n.log.bodies] == [1, 1, 1]
    assert no_n.log.max_in_flight == 3


async def test_n_emulated_async(no_n: Stack) -> None:
    no_n.log.hold_until = 3  # at least 3 single-choice calls in flight together (4 once n is known ignored)
    async with no_n.aclient() as client:
        r = await client.chat.completions.create(model="fake-model", messages=HELLO, n=4)
    assert len(r.choices) == 4 and len({c.message.content for c in r.choices}) == 4
    assert not no_n.log.stalled and no_n.log.max_in_flight >= 3


def test_n_emulated_streaming(no_n: Stack) -> None:
    no_n.log.hold_until = 2
    texts, finish, usage = streamed_choices(
        no_n.client().chat.completions.create(
            model="fake-model", messages=HELLO, n=3, seed=11, stream=True, stream_options={"include_usage": True}
        )
    )
    assert sorted(texts) == [0, 1, 2]
    assert finish == {i: "stop" for i in range(3)}
    sent = no_n.log.bodies
    # one n=3 try at most (until the engine learns this upstream ignores n), then single-choice streams
    assert len(sent) == 3 and sum(b.get("n", 1) > 1 for b in sent) <= 1
    assert sorted(b["seed"] for b in sent) == [11, 12, 13]  # emulated choices never share a seed
    assert not no_n.log.stalled  # the choices the upstream ignored are streamed concurrently
    assert no_n.log.max_in_flight >= 2
    assert usage[-1].model_extra["optigraph"]["upstream_calls"] == 3
    assert usage[-1].usage.completion_tokens == sum(len(t.split()) for t in texts.values())


def test_n_runs_a_composite_n_times(no_n: Stack) -> None:
    no_n.log.hold_until = 4
    r = no_n.client().chat.completions.create(model="none|none-fake-model", messages=HELLO, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in r.choices}) == 4
    assert r.model_extra["optigraph"]["upstream_calls"] == 4 == len(no_n.log.bodies)
    assert not no_n.log.stalled and no_n.log.max_in_flight == 4  # the n runs and their branches all at once


# ---- composite expressions ---------------------------------------------------------------------


def test_parallel_gives_one_choice_per_branch(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(model="none|none-fake-model", messages=HELLO)
    r = raw.parse()
    assert r.model == "fake-model" and r.object == "chat.completion"
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in r.choices] == [
        (i, "assistant", "echo: hello there", "stop") for i in range(2)
    ]
    assert all(c.logprobs is None for c in r.choices)
    ext = r.model_extra["optigraph"]
    assert ext == {"run_id": raw.headers["x-optigraph-run-id"], "approach": "none|none", "upstream_calls": 2}
    assert (
        r.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
        == fake_usage(stack.log.bodies)
        == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    )
    assert r.usage.completion_tokens_details.reasoning_tokens == 6


async def test_pipeline_second_stage_sees_first_answer(stack: Stack) -> None:
    async with stack.aclient() as client:
        r = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "system", "content": "Be brief."}, *HELLO],
            extra_body={"optillm_approach": "none&none"},
        )
    assert [c.message.content for c in r.choices] == ["echo: echo: hello there"]
    first, second = stack.log.bodies
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]
    assert second["messages"][0] == {"role": "system", "content": "Be brief."}
    assert second["messages"][-1] == {"role": "user", "content": "echo: hello there"}
    ext = r.model_extra["optigraph"]
    assert ext["approach"] == "none&none" and ext["upstream_calls"] == 2
    expected = fake_usage(stack.log.bodies)
    assert r.usage.model_dump(include=set(expected)) == expected
    assert r.usage.completion_tokens_details.reasoning_tokens == 6


def test_grouped_expression(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model="(none|none)&none-fake-model", messages=HELLO)
    assert [c.message.content for c in r.choices] == ["echo: echo: hello there"] * 2
    assert r.model_extra["optigraph"]["upstream_calls"] == 4 == len(stack.log.bodies)
    expected = fake_usage(stack.log.bodies)
    assert r.usage.model_dump(include=set(expected)) == expected


def test_precedence_and_binds_tighter(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model="fake-model", messages=HELLO, extra_body={"optillm_approach": "none|none&none"}
    )
    assert [c.message.content for c in r.choices] == ["echo: hello there", "echo: echo: hello there"]
    assert r.model_extra["optigraph"]["upstream_calls"] == 3


def test_composite_run_is_recorded_with_its_calls(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model="none&none-fake-model", messages=HELLO)
    run = stack.run(r.model_extra["optigraph"]["run_id"])
    assert run["status"] == "completed" and run["expression"] == "none&none" and run["checkpointed"]
    assert run["calls"] == 2 and run["total_tokens"] == r.usage.total_tokens
    calls = stack.calls(run["id"])
    assert len(calls) == 2 and all(c["status"] == "ok" for c in calls)
    assert sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls) == r.usage.total_tokens
