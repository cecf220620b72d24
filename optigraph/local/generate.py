"""Standard chat generation for several requests at once: one prefill per distinct prompt, n sampled rows
per request sharing it, per-request sampling, seeds, stop sequences, logprobs and streaming.

Runs on the model's worker thread (see worker.py), which groups requests that arrive together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optigraph.local.batch import BASE_ADAPTER, Batch
from optigraph.local.loop import decode_rows
from optigraph.local.models import LoadedModel
from optigraph.local.sampling import Sampling, choose, logprobs_of
from optigraph.local.text import Detokenizer, find_stop, held_back, token_text

# on_delta(choice index, text, logprob entries of the tokens behind that text)
OnDelta = Callable[[int, str, list[dict[str, Any]]], None]


@dataclass
class GenerateJob:
    """One request's share of a batch."""

    prompt: list[int]
    n: int
    max_tokens: int
    sampling: Sampling
    generator: Any  # torch.Generator of this request
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    adapter: str | None = None  # peft adapter name of its rows (None: the model has no adapters)
    cancel: threading.Event = field(default_factory=threading.Event)
    on_delta: OnDelta | None = None  # streaming: called as text becomes final

    @property
    def rows(self) -> int:
        """Rows it needs in the batch: greedy choices are all the same, so they are computed once."""
        return 1 if self.sampling.greedy else self.n


@dataclass
class Choice:
    text: str
    tokens: int  # completion tokens
    finish_reason: str  # "stop" or "length"
    logprobs: list[dict[str, Any]] | None = None  # OpenAI `logprobs.content` entries


class _Row:
    """The text side of one generated sequence."""

    def __init__(self, job: GenerateJob, choice: int, tokenizer: Any) -> None:
        self.job, self.choice, self.tokenizer = job, choice, tokenizer
        self.detok = Detokenizer(tokenizer)
        self.sent = 0  # characters streamed
        self.entries: list[dict[str, Any]] = []
        self.entries_sent = 0
        self.stop_at = -1  # where a stop sequence starts in the text

    def add(self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None) -> bool:
        """Adds a token; returns True when a stop sequence appeared."""
        if logprob is not None:
            self.entries.append(_entry(self.tokenizer, token, logprob[0], logprob[1]))
        before = len(self.detok.text)
        self.detok.add(token)
        self.stop_at = find_stop(self.detok.text, self.job.stop, before)
        if self.stop_at < 0:
            self._send(len(self.detok.text) - held_back(self.detok.text, self.job.stop))
        return self.stop_at >= 0

    def finish(self, finish_reason: str) -> Choice:
        if self.stop_at < 0:
            self.detok.flush()
        text = self.detok.text[:self.stop_at] if self.stop_at >= 0 else self.detok.text
        self._send(len(text), final=True)
        finish = "stop" if self.stop_at >= 0 else ("stop" if finish_reason in ("stop", "cancelled") else "length")
        return Choice(text=text, tokens=len(self.detok.ids), finish_reason=finish,
                      logprobs=self.entries if self.job.logprobs else None)

    def _send(self, upto: int, final: bool = False) -> None:
        if self.job.on_delta is None:
            return
        text = self.detok.text[self.sent:upto]
        entries = self.entries[self.entries_sent:] if (text or final) else []
        if text or entries:
            self.job.on_delta(self.choice, text, entries)
            self.sent, self.entries_sent = max(self.sent, upto), len(self.entries)


def _entry(tokenizer: Any, token: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
    def one(t: int, lp: float) -> dict[str, Any]:
        text, raw = token_text(tokenizer, t)
        return {"token": text, "logprob": lp, "bytes": list(raw)}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]}


def generate(lm: LoadedModel, jobs: list[GenerateJob]) -> list[list[Choice]]:
    """Generates every job's choices in one batch; returns them per job, in order."""
    for job in jobs:
        if len(job.prompt) >= lm.context:
            raise ValueError("prompt longer than the model's context")  # the caller checks this first
    # a job prepared before another one of the batch loaded the model's first adapter has no adapter name:
    # in a batch with adapters its rows are the base model's
    adapters = [job.adapter or BASE_ADAPTER for job in jobs] if any(job.adapter is not None for job in jobs) else None
    batch = Batch.prefill(lm.model, [job.prompt for job in jobs], pad_id=lm.pad_id, adapters=adapters)
    owner = [j for j, job in enumerate(jobs) for _ in range(job.rows)]  # job of each row
    batch.select(owner)  # n sampled rows of a job share its prompt's prefill
    rows = [_Row(jobs[j], owner[:r].count(j), lm.tokenizer) for r, j in enumerate(owner)]
    limits = [min(jobs[j].max_tokens, lm.context - len(jobs[j].prompt)) for j in owner]
    stash: dict[int, tuple[float, list[tuple[int, float]]]] = {}
    cancel = _AllCancelled([job.cancel for job in jobs])

    def pick(logits: Any, alive: list[int]) -> Any:
        import torch

        tokens = torch.empty(len(alive), dtype=torch.long)
        for j, job in enumerate(jobs):
            positions = [p for p, row in enumerate(alive) if owner[row] == j]
            if not positions:
                continue
            if job.cancel.is_set():  # a cancelled job's rows end now, the others go on
                tokens[positions] = next(iter(lm.eos_ids))
                continue
            block = logits[positions]
            chosen = choose(block, job.sampling, job.generator)
            tokens[positions] = chosen
            if job.logprobs:
                values, tops = logprobs_of(block, chosen, job.top_logprobs)
                for p, v, t in zip(positions, values, tops):
                    stash[alive[p]] = (v, t)
        return tokens

    def after(row: int, token: int, _logits: Any) -> str | None:
        return "stop" if rows[row].add(token, stash.pop(row, None)) else None

    results = decode_rows(batch, limits=limits, pick=pick, eos_ids=lm.eos_ids, cancel=cancel, after=after)
    out: list[list[Choice]] = [[] for _ in jobs]
    for r, (row, result) in enumerate(zip(rows, results)):
        out[owner[r]].append(row.finish(result.finish_reason))
    for j, job in enumerate(jobs):
        if job.rows < job.n:  # greedy: the same choice n times
            out[j] = out[j] * job.n
            if job.on_delta is not None:
                for choice in range(1, job.n):
                    job.on_delta(choice, out[j][0].text, out[j][0].logprobs or [])
    return out


class _AllCancelled:
    """An event-like view that is set when every job of the batch is cancelled."""

    def __init__(self, events: list[threading.Event]) -> None:
        self.events = events

    def is_set(self) -> bool:
        return all(e.is_set() for e in self.events)
