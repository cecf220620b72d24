"""Continuous batching: rows that join a running batch (left-padded KV caches) decode exactly as they
would alone, requests that arrive during a generation join it, and each request is answered as soon
as its own rows end."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tiny_model import TinyModel, hf_greedy

from optigraph.backends.local import LocalBackend
from optigraph.local.batch import Batch

QUESTION = [{"role": "user", "content": "What is two plus two?"}]


class HoldUntilQueued:
    """At its third forward pass the running generation waits until another request is queued, so that the
    request deterministically arrives while the generation runs. `guard_s` only ends a hang."""

    def __init__(self, worker: Any, guard_s: float = 60.0) -> None:
        self.worker, self.guard_s = worker, guard_s
        self.passes = 0
        self.saw_queued = False
        self.handle: Any = None

    def attach(self, lm: Any) -> None:
        model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model

        def hook(_module: Any, _args: Any) -> None:
            self.passes += 1
            if self.passes == 3:
                pause = threading.Event()  # never set: wait() is a sleep
                for _ in range(int(self.guard_s / 0.005)):
                    if self.worker._queue.qsize():
                        self.saw_queued = True
                        return
                    pause.wait(0.005)

        self.handle = model.model.register_forward_pre_hook(hook)

    def detach(self, _lm: Any = None) -> None:
        self.handle.remove()


@pytest.mark.parametrize("later", ["Hi", "Let me think step by step. First, add the numbers, then check them."])
def test_rows_joining_a_running_batch_decode_as_alone(tiny_lm: Any, later: str) -> None:
    first = tiny_lm.encode_chat(QUESTION)
    second = tiny_lm.encode_chat([{"role": "user", "content": later}])
    batch = Batch.prefill(tiny_lm.model, [first], pad_id=tiny_lm.pad_id)
    ran: list[list[int]] = [[]]
    for _ in range(5):  # the first row is 5 tokens ahead when the second joins (shorter or longer prompt)
        token = batch.logits.argmax(-1)
        ran[0].append(int(token[0]))
        batch.step(token)
    joining = Batch.prefill(tiny_lm.model, [second], pad_id=tiny_lm.pad_id)
    assert batch.can_extend
    batch.extend(joining)
    ran.append([])
    assert batch.rows == 2 and batch.length == max(len(first) + 5, len(second))
    for _ in range(8):
        tokens = batch.logits.argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            ran[row].append(token)
        batch.step(tokens)
    assert ran[0] == hf_greedy(tiny_lm.model, first, 13)
    assert ran[1] == hf_greedy(tiny_lm.model, second, 8)


async def test_a_request_joins_a_running_generation_and_is_answered_first(
    tiny: TinyModel, tiny_backend: LocalBackend
) -> None:
    model = str(tiny.path)
    short = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 5}
    alone = await tiny_backend.complete(short)
    worker = tiny_backend.worker
    batches, joined = worker.batches, worker.joined
    long_body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 400, "stream": True}
    stream = tiny_backend.stream(long_body)
    finished: list[str] = []

    async def long_one() -> str:
        text = ""
        async for chunk in stream:
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
        finished.append("long")
        return text

    hold = HoldUntilQueued(worker)
    await tiny_backend.run(hold.attach)
    try:
        long_task = asyncio.create_task(long_one())
        while not long_task.done() and hold.passes < 3:  # the long generation is under way (and now waits)
            await asyncio.sleep(0.005)
        joining = await tiny_backend.complete(short)
        finished.append("short")
        await long_task
    finally:
        await tiny_backend.run(hold.detach)
    assert hold.saw_queued
    assert worker.batches == batches + 1 and worker.joined == joined + 1, "the short request joined the running batch"
    assert finished == ["short", "long"], "answered when its own rows ended, not with the batch"
    assert joining["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    assert joining["usage"] == alone["usage"]


async def test_a_short_request_batched_with_a_long_one_is_answered_first(
    tiny: TinyModel, tiny_backend: LocalBackend
) -> None:
    model = str(tiny.path)
    batches = tiny_backend.worker.batches
    done: list[str] = []

    async def run(name: str, max_tokens: int) -> None:
        await tiny_backend.complete({"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": max_tokens})
        done.append(name)

    await asyncio.gather(run("long", 300), run("short", 3))
    assert tiny_backend.worker.batches == batches + 1 and done == ["short", "long"]


async def test_concurrent_requests_with_one_prompt_share_its_prefill(
    tiny: TinyModel, tiny_backend: LocalBackend, row_counter: Any
) -> None:
    body = {"model": str(tiny.path), "messages": QUESTION, "max_tokens": 4, "temperature": 1.0}
    replies = await asyncio.gather(*(tiny_backend.complete({**body, "seed": seed}) for seed in range(3)))
    assert all(r["usage"]["completion_tokens"] >= 1 for r in replies)
    assert row_counter.rows[0] == 1, "one prefill row for the three requests"
    assert max(row_counter.rows[1:]) == 3, "then one row per request"
