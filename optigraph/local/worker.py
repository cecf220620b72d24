"""The one thread that owns the local models.

Requests queue here; the thread takes the next one plus every compatible request that is waiting (same
base model; adapters may differ, peft mixes them in one batch) and generates them in one batch. While
it runs, requests that arrive join it between two steps (continuous batching) as long as there is room,
they need no adapter loaded first, and no other kind of work waits; each request is answered as soon as
its own sequences end. Model loading and decoding strategies run here too, one at a time, so the event
loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from optigraph.errors import UpstreamError
from optigraph.local.cache import ModelCache
from optigraph.local.generate import Choice, GenerateJob, Generation
from optigraph.local.models import LoadedModel, ModelSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Item:
    spec: ModelSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclass
class _Generate(_Item):
    prepare: Callable[[LoadedModel], GenerateJob]  # builds the job once the model is loaded (tokenizer needed)


@dataclass
class _Call(_Item):
    fn: Callable[[LoadedModel], Any]


def _settle(item: _Item, result: Any = None, error: BaseException | None = None) -> None:
    def set_it() -> None:
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(set_it)
    except RuntimeError:  # that event loop is closed: nobody waits for this result
        pass


class LocalWorker:
    """Runs model work on one thread, batching generation requests that arrive together."""

    def __init__(
        self, cache: ModelCache, *, batch_window_s: float = 0.005, max_batch_rows: int = 32, threads: int = 0
    ) -> None:
        self.cache = cache
        # torch intra-op threads, a process-wide torch setting. By default half the cores: the event loop,
        # HTTP and recording need the rest, and torch's threads slow each other down when one of them is
        # descheduled (bench/local_batching.py: a step at 8 rows took 146 ms with 1 thread, 230 ms with 2
        # on 2 cores)
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.batch_window_s = batch_window_s
        self.max_batch_rows = max_batch_rows
        self.batches = 0  # batches started (tests and the benchmark read it)
        self.joined = 0  # requests that joined a batch already running
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._later: deque[_Item] = deque()  # taken from the queue but not batchable with the current batch
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optigraph-local", daemon=True)
        self._thread.start()

    async def generate(self, spec: ModelSpec, prepare: Callable[[LoadedModel], GenerateJob]) -> list[Choice]:
        """The job's choices, generated in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        item = _Generate(spec=spec, loop=loop, future=loop.create_future(), prepare=prepare)
        self._queue.put(item)
        return await item.future

    async def call(self, spec: ModelSpec, fn: Callable[[LoadedModel], T]) -> T:
        """`fn(loaded model)` on the worker thread, alone (decoding strategies, warm-up)."""
        loop = asyncio.get_running_loop()
        item = _Call(spec=spec, loop=loop, future=loop.create_future(), fn=fn)
        self._queue.put(item)
        return await item.future

    def close(self, timeout: float = 10.0) -> None:
        """Stops the thread and waits for it (a thread left inside torch at interpreter exit can abort the
        process). A generation in progress ends at its next step with an error to its requests; queued
        work is dropped."""
        self._stopping.set()
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the worker thread --------------------------------------------------------------------

    def _next(self, timeout: float | None = None) -> _Item | None:
        if self._later:
            return self._later.popleft()
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

        while True:
            item = self._next()
            if item is None:
                return
            try:
                with torch.inference_mode():
                    if isinstance(item, _Generate):
                        self._run_batch(self._gather(item))
                    else:
                        self._run_call(item)
            except BaseException:
                logger.exception("local worker: unexpected failure")

    def _gather(self, first: _Generate) -> list[_Generate]:
        """The first request plus the compatible ones waiting now or within the batch window."""
        batch, skipped = [first], []
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch_rows:
            try:
                item = self._next(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            if isinstance(item, _Generate) and item.spec.base.path == first.spec.base.path:
                batch.append(item)
            else:
                skipped.append(item)
        self._later.extend(skipped)
        return batch

    def _run_call(self, item: _Call) -> None:
        if item.future.cancelled():
            return
        try:
            _settle(item, item.fn(self.cache.get(item.spec)))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            _settle(item, error=exc)

    def _prepare(self, items: list[_Generate], room: int) -> list[tuple[_Generate, GenerateJob]]:
        """Jobs for the items, up to `room` rows; a failing item fails alone, the rest wait their turn."""
        ready: list[tuple[_Generate, GenerateJob]] = []
        deferred: list[_Generate] = []
        rows = 0
        for item in items:
            if item.future.cancelled():
                continue
            try:
                job = item.prepare(self.cache.get(item.spec))
            except BaseException as exc:  # noqa: BLE001 - a bad request fails alone
                _settle(item, error=exc)
                continue
            if (ready or room < self.max_batch_rows) and rows + job.rows > room:
                deferred.append(item)  # too many rows: it leads the next batch (prepared again then)
                continue
            ready.append((item, job))
            rows += job.rows
        self._later.extendleft(reversed(deferred))  # in their order of arrival
        return ready

    def _joinable(self, item: _Generate, lm: LoadedModel) -> bool:
        """Whether a queued item can join the running generation now: same base model, and no adapter to
        load (loading one changes the model's layers under the rows already running)."""
        return item.spec.base.path == lm.source.path and all(
            lm.adapters.get(name) == path for name, path in item.spec.adapters
        )

    def _joiners(self, lm: LoadedModel, room: int) -> list[_Generate]:
        """Queued requests that can join now; stops at the first that cannot (it runs after this batch)."""
        joiners: list[_Generate] = []
        while not self._later and len(joiners) < room:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: leave the signal for the main loop
                self._queue.put(None)
                break
            if not isinstance(item, _Generate) or not self._joinable(item, lm):
                self._later.append(item)
                break
            joiners.append(item)
        return joiners

    def _run_batch(self, items: list[_Generate]) -> None:
        """Runs the items as one generation; requests that arrive meanwhile join it between steps
        (continuous batching) while there is room and no other kind of work is waiting."""
        ready = self._prepare(items, self.max_batch_rows)
        if not ready:
            return
        self.batches += 1
        waiting = {id(job): item for item, job in ready}
        lm = self.cache.get(ready[0][0].spec)

        def done(job: GenerateJob, choices: list[Choice]) -> None:
            _settle(waiting.pop(id(job)), choices)

        generation = Generation(lm, done)
        try:
            generation.add([job for _, job in ready])
            while not generation.done:
                if self._stopping.is_set():
                    raise UpstreamError("the local model is shutting down")
                generation.step()
                room = self.max_batch_rows - generation.rows
                if room > 0 and not generation.done and generation.can_join:
                    joined = self._prepare(self._joiners(lm, room), room)
                    if joined:
                        self.joined += len(joined)
                        waiting.update({id(job): item for item, job in joined})
                        generation.add([job for _, job in joined])
        except BaseException as exc:
            logger.exception("local generation failed")
            for item in waiting.values():
                _settle(item, error=exc)
