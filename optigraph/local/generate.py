"""Standard chat generation for several requests at once: one prefill row per distinct prompt (and
adapter), the n sampled rows of every request with that prompt sharing it, per-request sampling,
seeds, stop sequences, logprobs and streaming.

Runs on the model's worker thread (see worker.py), which groups requests that arrive together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optigraph.local.batch import BASE_ADAPTER, Batch
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
    grammar: Any = None  # grammar.Grammar: what its rows may write (response_format), None: anything
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
        self.guide = job.grammar.start() if job.grammar is not None else None  # its place in the grammar
        self.detok = Detokenizer(tokenizer)
        self.sent = 0  # characters streamed
        self.entries: list[dict[str, Any]] = []
        self.entries_sent = 0
        self.stop_at = -1  # where a stop sequence starts in the text

    def add(self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None) -> bool:
        """Adds a token; returns True when a stop sequence appeared."""
        if logprob is not None:
            self.entries.append(_entry(self.tokenizer, token, logprob[0], logprob[1]))
        if self.guide is not None:
            self.guide.advance(token)
        before = len(self.detok.text)
        self.detok.add(token)
        self.stop_at = find_stop(self.detok.text, self.job.stop, before)
        if self.stop_at < 0:
            self._send(len(self.detok.text) - held_back(self.detok.text, self.job.stop))
        return self.stop_at >= 0

    def finish(self, finish_reason: str) -> Choice:
        if self.stop_at < 0:
            self.detok.flush()
        text = self.detok.text[: self.stop_at] if self.stop_at >= 0 else self.detok.text
        self._send(len(text), final=True)
        finish = "stop" if self.stop_at >= 0 else ("stop" if finish_reason in ("stop", "cancelled") else "length")
        return Choice(
            text=text,
            tokens=len(self.detok.ids),
            finish_reason=finish,
            logprobs=self.entries if self.job.logprobs else None,
        )

    def _send(self, upto: int, final: bool = False) -> None:
        if self.job.on_delta is None:
            return
        text = self.detok.text[self.sent : upto]
        entries = self.entries[self.entries_sent :] if (text or final) else []
        if text or entries:
            self.job.on_delta(self.choice, text, entries)
            self.sent, self.entries_sent = max(self.sent, upto), len(self.entries)


def _entry(tokenizer: Any, token: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
    def one(t: int, lp: float) -> dict[str, Any]:
        text, raw = token_text(tokenizer, t)
        return {"token": text, "logprob": lp, "bytes": list(raw)}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]}


@dataclass
class _Active:
    """A row of the running batch."""

    job: GenerateJob
    row: _Row
    limit: int  # most tokens it may generate


class Generation:
    """Standard generation as a running batch that jobs can join between steps (continuous batching).

    `add` prefills new jobs (one row per distinct prompt, then their n sampled rows as copies of it)
    and appends them to the running batch; `step` decodes one token for every row, and a job is handed
    to `on_done` as soon as its own rows are finished, not when the whole batch is. Worker thread only."""

    def __init__(self, lm: LoadedModel, on_done: Callable[[GenerateJob, list[Choice]], None]) -> None:
        self.lm = lm
        self.on_done = on_done
        self.batch: Batch | None = None
        self.active: list[_Active] = []  # aligned with the batch's rows
        self.pending: dict[int, tuple[GenerateJob, dict[int, Choice]]] = {}  # id(job) -> job, finished choices

    @property
    def rows(self) -> int:
        return len(self.active)

    @property
    def done(self) -> bool:
        return not self.active

    @property
    def can_join(self) -> bool:
        return self.batch is None or self.batch.can_extend

    def jobs(self) -> list[GenerateJob]:
        return [job for job, _ in self.pending.values()]

    def add(self, jobs: list[GenerateJob]) -> None:
        lm = self.lm
        for job in jobs:
            if len(job.prompt) >= lm.context:
                raise ValueError("prompt longer than the model's context")  # the caller checks this first
        # a job prepared before another one loaded the model's first adapter has no adapter name:
        # in a batch with adapters its rows are the base model's
        with_adapters = any(job.adapter is not None for job in jobs) or (
            self.batch is not None and self.batch.adapters is not None
        )
        keys = [(tuple(job.prompt), (job.adapter or BASE_ADAPTER) if with_adapters else None) for job in jobs]
        distinct = list(dict.fromkeys(keys))  # requests with the same prompt and adapter share one prefill row
        batch = Batch.prefill(
            lm.model,
            [list(prompt) for prompt, _ in distinct],
            pad_id=lm.pad_id,
            adapters=[adapter for _, adapter in distinct] if with_adapters else None,
        )
        owner = [j for j, job in enumerate(jobs) for _ in range(job.rows)]
        batch.select([distinct.index(keys[j]) for j in owner])  # sampled rows are copies of their prefill row
        for r, j in enumerate(owner):
            job = jobs[j]
            self.active.append(
                _Active(
                    job, _Row(job, owner[:r].count(j), lm.tokenizer), min(job.max_tokens, lm.context - len(job.prompt))
                )
            )
        for job in jobs:
            self.pending[id(job)] = (job, {})
        if self.batch is None:
            self.batch = batch
        else:
            self.batch.extend(batch)

    def step(self) -> None:
        """One token for every row; finished rows leave the batch, finished jobs go to `on_done`."""
        import torch

        assert self.batch is not None
        eos = self.lm.eos_ids
        tokens = torch.empty(len(self.active), dtype=torch.long)
        groups: dict[int, list[int]] = {}
        for p, a in enumerate(self.active):
            groups.setdefault(id(a.job), []).append(p)
        logprobs: dict[int, tuple[float, list[tuple[int, float]]]] = {}
        for positions in groups.values():
            job = self.active[positions[0]].job
            if job.cancel.is_set():  # a cancelled job's rows end now, the others go on
                tokens[positions] = next(iter(eos))
                continue
            block = self.batch.logits[positions]
            allowed = block
            if job.grammar is not None:  # what the grammar forbids cannot be drawn (logprobs stay the model's)
                allowed = torch.stack([self.active[p].row.guide.mask(block[i]) for i, p in enumerate(positions)])
            chosen = choose(allowed, job.sampling, job.generator)
            tokens[positions] = chosen
            if job.logprobs:
                values, tops = logprobs_of(block, chosen, job.top_logprobs)
                logprobs.update({p: (v, t) for p, v, t in zip(positions, values, tops)})
        keep: list[int] = []
        for p, (a, token) in enumerate(zip(self.active, tokens.tolist())):
            if token in eos or a.row.add(token, logprobs.get(p)):
                self._finished(a, "stop")
            elif len(a.row.detok.ids) >= a.limit:
                self._finished(a, "length")
            else:
                keep.append(p)
        if not keep:
            self.batch, self.active = None, []
            return
        if len(keep) < len(self.active):
            self.batch.select(keep)
            tokens = tokens[keep]
            self.active = [self.active[p] for p in keep]
        self.batch.step(tokens)

    def _finished(self, a: _Active, reason: str) -> None:
        job, choices = self.pending[id(a.job)]
        choices[a.row.choice] = a.row.finish(reason)
        if len(choices) < job.rows:
            return
        del self.pending[id(job)]
        out = [choices[i] for i in range(job.rows)]
        if job.rows < job.n:  # greedy: the same choice n times
            out = out * job.n
            if job.on_delta is not None:
                for choice in range(1, job.n):
                    job.on_delta(choice, out[0].text, out[0].logprobs or [])
        self.on_done(job, out)
