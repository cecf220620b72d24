"""What a decoding strategy gets and returns. Strategies run on the model's worker thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from optigraph.local.batch import Batch
from optigraph.local.models import LoadedModel
from optigraph.local.sampling import Sampling


@dataclass
class DecodeContext:
    """One request, as a decoding strategy sees it."""

    lm: LoadedModel
    messages: list[dict[str, str]]  # the request's messages (text only)
    prompt: list[int]  # the chat-templated prompt ids
    adapter: str | None  # peft adapter name for every row (None: the model has no adapters)
    max_tokens: int | None  # the client's max_tokens, None when not given (strategies have their own defaults)
    sampling: Sampling  # the client's temperature / top_p
    generator: Any  # torch.Generator of this request (seeded when the client gave a seed)
    cancel: threading.Event  # set when the client went away: stop as soon as possible
    emit: Callable[[str], None] | None = None  # streams final text as it is decided (streaming strategies)
    explicit: frozenset[str] = frozenset()  # body fields the client set (to tell a default from a choice)

    def prefill(self, prompts: Sequence[Sequence[int]] | None = None, *, hidden: bool = False) -> Batch:
        """A batch over `prompts` (default: the request's prompt once) with this request's adapter."""
        rows = [list(p) for p in prompts] if prompts is not None else [self.prompt]
        adapters = [self.adapter] * len(rows) if self.adapter is not None else None
        return Batch.prefill(self.lm.model, rows, pad_id=self.lm.pad_id, adapters=adapters, hidden=hidden)

    def room(self, prompt_tokens: int) -> int:
        """How many tokens fit after a prompt of this length in the model's context."""
        return max(0, self.lm.context - prompt_tokens)


@dataclass
class DecodeResult:
    text: str
    completion_tokens: int  # every token generated, all paths and traces included (what it cost)
    finish_reason: str = "stop"  # "stop" or "length"
    prompt_tokens: int = 0  # prompt tokens run through the model beyond the request's prompt (re-runs, extra prompts)
    info: dict[str, Any] = field(default_factory=dict)  # the strategy's details, returned as `optigraph.decoding`


@dataclass(frozen=True)
class Decoder:
    """A decoding strategy: its name (OptILLM's), typed parameters with defaults, and its function."""

    name: str
    params: type[BaseModel]  # fields are body keys (OptILLM's names); unknown body keys are ignored
    run: Callable[[DecodeContext, Any], DecodeResult]
    summary: str
    streams: bool = False  # sends text through ctx.emit while decoding (else the answer comes at the end)
