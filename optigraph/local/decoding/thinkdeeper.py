"""`thinkdeeper`: budget forcing of a reasoning model's thinking.

Budget forcing is the test-time scaling method of "s1: Simple test-time scaling" (Muennighoff et al.,
arXiv 2501.19393): the length of a model's thinking is controlled at decoding time. When the model
tries to stop thinking too early, the end-of-thinking delimiter is suppressed and a phrase such as
"Wait," is appended so it reconsiders; when it thinks too long, the delimiter is forced so it answers.
OptILLM exposes this as `thinkdeeper`, tied to OpenAI's `reasoning_effort`.

Algorithm (one row, token by token, with the request's sampling and seeded generator):
1. The assistant turn is prefilled with `start_think_token` + "\\n" + `prefill`; the response text starts
   with that same head, so it reads `<think>\\n...</think>\\nanswer`.
2. While thinking, the end marker is looked for in the decoded text (a marker may be several tokens in
   a tokenizer). If the marker, or an end-of-sequence token, comes before `min_thinking_tokens`, it is
   taken out of the sequence and a switch phrase (one of `thought_switch_tokens`, drawn with the
   request's generator) is forced instead. An end-of-sequence token never reaches the KV cache; a
   marker whose first tokens did is cut by re-running the kept sequence through the model (rare: the
   batch has no crop).
3. Once `max_thinking_tokens` tokens were spent thinking, or `max_thoughts` switch phrases appear in
   the thinking (the model's own "Wait," counts), "\\n" + `end_think_token` + "\\n" is forced. An
   end-of-sequence token after the minimum also gets the end marker forced, so the answer follows a
   closed thinking block.
4. After the marker the answer is sampled until end of sequence or `max_tokens` (thinking included).
   Unlike OptILLM, the answer phase is bounded too.

Parameters (OptILLM's body keys):
- `reasoning_effort` (low): the effort profile, also the standard OpenAI field: with `max_tokens` M,
  `min_thinking_tokens` = 10% of M, `max_thinking_tokens` = 33% / 66% / 90% of M and `max_thoughts`
  = 64 / 256 / 512 for low / medium / high ("minimal" is low). Explicit values override the profile.
- `max_tokens` (the client's, else 1024 here: a CPU-sized default; OptILLM requires it): tokens of the
  whole response, thinking and forced phrases included; also bounded by the room in the context.
- `min_thinking_tokens`, `max_thinking_tokens`, `max_thoughts`: the budget (see above); the maximum is
  at most `max_tokens` and the minimum at most the maximum.
- `thought_switch_tokens` (["Wait,", "Alternatively,", "However,", "Additionally,"]): the phrases
  forced when the model stops early; they start a new line unless the text already ends in a space.
- `prefill` (""): text after the start marker that the model continues from.
- `start_think_token` ("<think>"), `end_think_token` ("</think>"): the thinking delimiters.

The text streams as it is decided: text that could still become an early end marker is held back
until it cannot, so what is sent never has to be taken back. `info`: the thinking tokens, thoughts,
switch phrases forced, how thinking ended (`model`, `eos`, `budget`, `thoughts`) and the budget.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optigraph.local.batch import Batch
from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult
from optigraph.local.sampling import choose
from optigraph.local.text import Detokenizer, held_back

DEFAULT_MAX_TOKENS = 1024  # when the client gives none: a CPU-sized response (OptILLM requires max_tokens)
SWITCH_PHRASES = ("Wait,", "Alternatively,", "However,", "Additionally,")
MIN_THINKING_SHARE = 0.10  # of max_tokens, every effort
EFFORT_PROFILES: dict[str, tuple[float, int]] = {  # effort -> (max thinking share of max_tokens, max thoughts)
    "low": (0.33, 64),
    "medium": (0.66, 256),
    "high": (0.90, 512),
}
EFFORT_ALIASES = {"minimal": "low"}
SWITCH_SEPARATOR = "\n"  # a forced switch phrase starts a new line
DETOKENIZER_CONTEXT = 8  # tokens decoded ahead of new ones, so word-initial spaces come out right

Phrase = Annotated[str, Field(min_length=1, max_length=200)]


class ThinkingParams(BaseModel):
    """The fields every budget-forced thinking strategy shares (thinkdeeper, autothink)."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens of the whole response, thinking included "
        f"(the client's max_tokens; {DEFAULT_MAX_TOKENS} when none is given).",
    )
    min_thinking_tokens: int | None = Field(
        None,
        ge=0,
        description="Thinking tokens before the model may stop "
        "thinking; an earlier end is replaced by a switch phrase.",
    )
    max_thinking_tokens: int | None = Field(
        None, ge=1, description="Thinking tokens after which the end marker is forced."
    )
    max_thoughts: int | None = Field(
        None, ge=1, le=10_000, description="Switch phrases in the thinking after which the end marker is forced."
    )
    thought_switch_tokens: tuple[Phrase, ...] = Field(
        SWITCH_PHRASES,
        min_length=1,
        max_length=64,
        description="Phrases forced when the model stops thinking too early (one drawn at random each time).",
    )
    prefill: str = Field("", max_length=10_000, description="Text after the start marker that the model continues.")
    start_think_token: str = Field("<think>", min_length=1, max_length=64, description="Start-of-thinking marker.")
    end_think_token: str = Field("</think>", min_length=1, max_length=64, description="End-of-thinking marker.")


class ThinkDeeperParams(ThinkingParams):
    reasoning_effort: Literal["minimal", "low", "medium", "high"] = Field(
        "low",
        description="Effort profile when the budget is not given: max thinking 33/66/90% of max_tokens, "
        "max thoughts 64/256/512 (low/medium/high; minimal is low), min thinking 10%.",
    )


@dataclass(frozen=True)
class ThinkingPlan:
    """A resolved budget for one request."""

    max_tokens: int
    min_thinking_tokens: int
    max_thinking_tokens: int
    max_thoughts: int
    switch_phrases: tuple[str, ...] = SWITCH_PHRASES
    prefill: str = ""
    start_think: str = "<think>"
    end_think: str = "</think>"

    @property
    def head(self) -> str:
        """The start of the assistant turn, prefilled and part of the response."""
        return f"{self.start_think}\n{self.prefill}"

    def describe(self) -> dict[str, int]:
        return {
            "max_tokens": self.max_tokens,
            "min_thinking_tokens": self.min_thinking_tokens,
            "max_thinking_tokens": self.max_thinking_tokens,
            "max_thoughts": self.max_thoughts,
        }


@dataclass(frozen=True)
class ThinkingOutcome:
    text: str
    completion_tokens: int  # tokens of the response, forced ones included
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int  # prompt tokens run through the model (re-runs after a cut included)
    thinking_tokens: int  # tokens up to the end marker, the marker included
    thoughts: int  # switch phrases in the thinking, forced or not
    thoughts_forced: int
    forced_tokens: int  # tokens the budget put in (switch phrases, end marker)
    end: str | None  # how thinking ended: "model", "eos", "budget", "thoughts"; None if it never did
    rewinds: int  # early end markers cut out of the sequence

    def info(self) -> dict[str, Any]:
        return {
            "thinking_tokens": self.thinking_tokens,
            "thoughts": self.thoughts,
            "thoughts_forced": self.thoughts_forced,
            "forced_tokens": self.forced_tokens,
            "thinking_end": self.end,
            "end_forced": self.end in ("eos", "budget", "thoughts"),
            "rewinds": self.rewinds,
            "cancelled": self.finish_reason == "cancelled",
        }


def effort_profile(effort: str, max_tokens: int) -> tuple[int, int, int]:
    """(min thinking tokens, max thinking tokens, max thoughts) of an effort level for a token budget."""
    share, thoughts = EFFORT_PROFILES[EFFORT_ALIASES.get(effort, effort)]
    return round(MIN_THINKING_SHARE * max_tokens), max(1, round(share * max_tokens)), thoughts


def requested_max_tokens(ctx: DecodeContext, params: ThinkingParams) -> int:
    """The response's token budget before the context bound: the client's (`max_completion_tokens` or
    `max_tokens`), else the default."""
    if ctx.max_tokens is not None:
        return ctx.max_tokens
    return params.max_tokens if params.max_tokens is not None else DEFAULT_MAX_TOKENS


def make_plan(params: ThinkingParams, max_tokens: int, minimum: int, maximum: int, thoughts: int) -> ThinkingPlan:
    """A plan from defaults, with the explicit body values winning; the bounds made consistent."""
    high = min(params.max_thinking_tokens if params.max_thinking_tokens is not None else maximum, max_tokens)
    low = min(params.min_thinking_tokens if params.min_thinking_tokens is not None else minimum, high)
    return ThinkingPlan(
        max_tokens=max_tokens,
        min_thinking_tokens=low,
        max_thinking_tokens=max(1, high),
        max_thoughts=params.max_thoughts if params.max_thoughts is not None else thoughts,
        switch_phrases=tuple(params.thought_switch_tokens),
        prefill=params.prefill,
        start_think=params.start_think_token,
        end_think=params.end_think_token,
    )


def thinking_prompt(ctx: DecodeContext, start_think: str, prefill: str) -> list[int]:
    """The request's chat prompt with the assistant turn opened on the thinking head."""
    return ctx.lm.encode_chat(ctx.messages, prefill=f"{start_think}\n{prefill}")


def count_new(text: str, phrases: Sequence[str], since: int, floor: int = 0) -> int:
    """Occurrences of `phrases` in `text[floor:]` that end after `since` (the text scanned before)."""
    longest = max((len(p) for p in phrases), default=0)
    start = max(floor, since - longest + 1)
    found = 0
    for phrase in phrases:
        at = text.find(phrase, start)
        while at >= 0:
            if at + len(phrase) > since:
                found += 1
            at = text.find(phrase, at + 1)
    return found


class Phase(enum.Enum):
    THINKING = "thinking"
    ENDING = "ending"  # the end marker is being forced
    ANSWER = "answer"


class Action(enum.Enum):
    """What becomes of a token once it is checked."""

    FEED = "feed"  # goes into the KV cache as usual
    DROP = "drop"  # was taken out before reaching the cache
    REBUILD = "rebuild"  # tokens already in the cache were taken out: re-run the kept sequence


class ThinkingRun:
    """One request's budget-forced generation (a single row). Create, then `run()` once."""

    def __init__(self, ctx: DecodeContext, plan: ThinkingPlan, prompt: Sequence[int]) -> None:
        self.ctx, self.plan, self.prompt = ctx, plan, list(prompt)
        self.tokenizer = ctx.lm.tokenizer
        self.text = plan.head
        self.tokens: list[int] = []
        self.ends: list[int] = []  # len(self.text) once each token was added
        self.was_forced: list[bool] = []  # per token: put there by the budget, not sampled
        self.detok = self._detokenizer(self.prompt)
        self.forced: deque[int] = deque()
        self.phase = Phase.THINKING
        self.scan = len(self.text)  # the end marker is looked for from here on
        self.counted = len(self.text)  # thoughts are counted up to here
        self.sent = 0
        self.prompt_tokens = len(self.prompt)
        self.thoughts = self.thoughts_forced = self.rewinds = self.thinking_tokens = 0
        self.end: str | None = None

    def run(self) -> ThinkingOutcome:
        batch = self._prefill()
        finish = "length"
        while len(self.tokens) < self.plan.max_tokens:
            if self.ctx.cancel.is_set():
                finish = "cancelled"
                break
            was_forced = bool(self.forced)
            token = (
                self.forced.popleft()
                if was_forced
                else int(choose(batch.logits, self.ctx.sampling, self.ctx.generator)[0])
            )
            if not was_forced and token in self.ctx.lm.eos_ids:
                if self.phase is Phase.ANSWER:
                    finish = "stop"
                    break
                self._early_eos()  # the end-of-sequence token never reaches the cache
                continue
            self._add(token, was_forced)
            action = self._check()
            self._emit()
            if len(self.tokens) >= self.plan.max_tokens:
                break  # no next token: no forward pass
            if action is Action.FEED:
                batch.step([token])
            elif action is Action.REBUILD:
                batch = self._prefill()
        self._flush()
        return ThinkingOutcome(
            text=self.text,
            completion_tokens=len(self.tokens),
            finish_reason=finish,
            prompt_tokens=self.prompt_tokens,
            thinking_tokens=self.thinking_tokens or len(self.tokens),
            thoughts=self.thoughts,
            thoughts_forced=self.thoughts_forced,
            forced_tokens=sum(self.was_forced),
            end=self.end,
            rewinds=self.rewinds,
        )

    # -- the sequence -------------------------------------------------------------------------------

    def _prefill(self) -> Batch:
        """The prompt and the tokens kept so far through the model (again after a cut)."""
        sequence = self.prompt + self.tokens
        if self.tokens:
            self.prompt_tokens += len(sequence)
        return self.ctx.prefill([sequence])

    def _detokenizer(self, context: Sequence[int]) -> Detokenizer:
        detok = Detokenizer(self.tokenizer)
        for token in context[-DETOKENIZER_CONTEXT:]:
            detok.add(token)
        return detok

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _add(self, token: int, forced: bool) -> None:
        self.tokens.append(token)
        self.was_forced.append(forced)
        self.text += self.detok.add(token)
        self.ends.append(len(self.text))

    def _force(self, text: str) -> None:
        self.forced.extend(self._encode(text))

    # -- the budget ---------------------------------------------------------------------------------

    def _check(self) -> Action:
        """Looks at the text after a new token: the end marker, thoughts, the thinking budget."""
        if self.phase is Phase.ANSWER:
            return Action.FEED
        marker = self.plan.end_think
        at = self.text.find(marker, self.scan)
        if at >= 0:
            if self.phase is Phase.THINKING and bisect_right(self.ends, at) < self.plan.min_thinking_tokens:
                return self._rewind(at)
            self._start_answer()
            return Action.FEED
        self.scan = max(self.scan, len(self.text) - len(marker) + 1)
        if self.phase is Phase.ENDING and not self.forced:
            self._start_answer()  # the forced marker is in, even if it decodes to no text (a special token)
        elif self.phase is Phase.THINKING:
            self._count_thoughts()
            if len(self.tokens) >= self.plan.max_thinking_tokens:
                self._end_thinking("budget")
            elif self.thoughts >= self.plan.max_thoughts:
                self._end_thinking("thoughts")
        return Action.FEED

    def _start_answer(self) -> None:
        self.phase = Phase.ANSWER
        self.end = self.end or "model"
        self.thinking_tokens = len(self.tokens)

    def _count_thoughts(self) -> None:
        self.thoughts += count_new(self.text, self.plan.switch_phrases, self.counted, len(self.plan.head))
        self.counted = len(self.text)

    def _early_eos(self) -> None:
        if len(self.tokens) < self.plan.min_thinking_tokens:
            self._switch()
        else:
            self._end_thinking("eos")

    def _end_thinking(self, why: str) -> None:
        self.phase, self.end = Phase.ENDING, why
        self._force(f"\n{self.plan.end_think}\n")

    def _switch(self) -> None:
        """Forces a switch phrase (drawn with the request's generator, so a seed repeats it)."""
        import torch

        phrases = self.plan.switch_phrases
        phrase = phrases[int(torch.randint(len(phrases), (1,), generator=self.ctx.generator))]
        separator = "" if not self.text or self.text[-1].isspace() else SWITCH_SEPARATOR
        self._force(separator + phrase)
        self.thoughts_forced += 1

    def _rewind(self, at: int) -> Action:
        """Cuts the sequence back to just before an early end marker at text offset `at`, then switches.

        Tokens whose text ends by `at` are kept; text of a cut token that came before the marker (the
        space of " </") is re-encoded, so the text already sent stays true."""
        keep = bisect_right(self.ends, at)
        gap = self.text[(self.ends[keep - 1] if keep else len(self.plan.head)) : at]
        in_cache = max(0, len(self.tokens) - keep - 1)  # the newest token has not been fed yet
        del self.tokens[keep:], self.ends[keep:], self.was_forced[keep:]
        self.text = self.text[:at]
        gap_ids = self._encode(gap) if gap else []
        self.tokens += gap_ids
        self.ends += [at] * len(gap_ids)
        self.was_forced += [True] * len(gap_ids)
        self.detok = self._detokenizer(self.prompt + self.tokens)
        self.scan, self.counted = at, min(self.counted, at)
        self.rewinds += 1
        self._switch()
        return Action.REBUILD if in_cache > 0 or gap_ids else Action.DROP

    # -- streaming ----------------------------------------------------------------------------------

    def _emit(self) -> None:
        if self.ctx.emit is None:
            return
        hold = held_back(self.text, [self.plan.end_think]) if self.phase is Phase.THINKING else 0
        safe = len(self.text) - hold
        if safe > self.sent:
            self.ctx.emit(self.text[self.sent : safe])
            self.sent = safe

    def _flush(self) -> None:
        self.text += self.detok.flush()
        if self.ctx.emit is not None and len(self.text) > self.sent:
            self.ctx.emit(self.text[self.sent :])
            self.sent = len(self.text)


def think(ctx: DecodeContext, plan: ThinkingPlan, prompt: Sequence[int]) -> ThinkingOutcome:
    """Budget-forced generation of `prompt` (a `thinking_prompt`) under `plan`."""
    return ThinkingRun(ctx, plan, prompt).run()


def result_of(ctx: DecodeContext, outcome: ThinkingOutcome, info: dict[str, Any]) -> DecodeResult:
    """The DecodeResult of a thinking run: prompt tokens beyond the request's own, a cancel as "length"."""
    return DecodeResult(
        text=outcome.text,
        completion_tokens=outcome.completion_tokens,
        finish_reason="stop" if outcome.finish_reason == "stop" else "length",
        prompt_tokens=max(0, outcome.prompt_tokens - len(ctx.prompt)),
        info={**info, **outcome.info()},
    )


def run(ctx: DecodeContext, params: ThinkDeeperParams) -> DecodeResult:
    prompt = thinking_prompt(ctx, params.start_think_token, params.prefill)
    max_tokens = min(requested_max_tokens(ctx, params), ctx.room(len(prompt)))
    minimum, maximum, thoughts = effort_profile(params.reasoning_effort, max_tokens)
    plan = make_plan(params, max_tokens, minimum, maximum, thoughts)
    info = {"reasoning_effort": params.reasoning_effort, **plan.describe()}
    if max_tokens < 1:
        return DecodeResult(text="", completion_tokens=0, finish_reason="length", info=info)
    return result_of(ctx, think(ctx, plan, prompt), info)


DECODER = Decoder(
    name="thinkdeeper",
    params=ThinkDeeperParams,
    run=run,
    summary="Budget forcing (s1, arXiv 2501.19393): the model thinks at least min_thinking_tokens (an early end "
    "becomes 'Wait,' or another switch phrase) and at most max_thinking_tokens, then answers; "
    "reasoning_effort sets the budget.",
    streams=True,
)
