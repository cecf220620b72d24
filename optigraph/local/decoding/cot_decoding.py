"""`cot_decoding`: chain-of-thought decoding, branching on the first token and trusting the most confident answer.

Wang & Zhou, "Chain-of-Thought Reasoning Without Prompting" (arXiv 2402.10200). Greedy decoding often
answers at once; the alternatives to its first token frequently start a chain of thought instead, and
the paths that reason tend to be more confident about their final answer.

1. One forward pass over the prompt; the k most likely first tokens (end-of-sequence excluded: it
   would start an empty answer).
2. The k paths are decoded greedily together, in one batch sharing the prompt's prefill.
3. Each path's confidence is the margin p(top1) - p(top2) of the model's next-token distribution
   (softmax of the raw logits), averaged over the tokens of the path's answer, as in the paper. The
   answer is found with `optigraph.core.answers` (boxed, "final answer", "the answer is", "####",
   the last number) and located as its last occurrence in the text; tokens are mapped to character
   offsets by incremental decoding. A path with no answer is scored over all its tokens.
4. With `aggregate_paths` (the paper's "CoT-decoding (agg)"), paths are grouped by their normalised
   answer and the group with the largest summed confidence wins; its most confident path is returned.
   Otherwise the single most confident path is returned.

Better than OptILLM's version: the margin is taken on the answer tokens rather than on the whole
continuation, paths are grouped by answer rather than by identical text, and the k paths run as one
batch instead of k sequential `generate` calls.

Parameters (OptILLM's body keys):
- `k` (10): paths, i.e. first tokens branched on.
- `num_beams` (1): only 1 (greedy paths, as in the paper) is supported; larger values are rejected.
- `max_tokens` (512 when the client gives none): token limit per path, first token included; also
  bounded by the room left in the model's context.
- `aggregate_paths` (true): vote by summed confidence per answer (step 4).
- `no_repeat_ngram_size` (0: off): no path repeats an n-gram of its sequence (prompt included), as
  transformers' `no_repeat_ngram_size`.
- `temperature`, `top_p`, `length_penalty`, `early_stopping`: accepted for compatibility and ignored
  (every path is greedy; the last two only matter to beam search).

Cost: one prompt prefill, then at most `max_tokens` batched steps over k rows; `completion_tokens`
counts every token of every path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from optigraph.core.answers import extract_answer, normalize_answer
from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult
from optigraph.local.loop import decode_rows
from optigraph.local.text import Detokenizer, token_text

DEFAULT_MAX_TOKENS = 512  # OptILLM's default when the client gives no max_tokens
NO_ANSWER_KEY = "text:"  # prefix of the vote key of a path with no answer: its whole text


class CotDecodingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    k: int = Field(10, ge=1, le=100, description="Paths: the k most likely first tokens, each continued greedily.")
    num_beams: int = Field(1, ge=1, le=1, description="Beams per path; only 1 (greedy paths) is supported.")
    max_tokens: int | None = Field(
        DEFAULT_MAX_TOKENS, ge=1, description="Token limit per path (first token included) when the client gives none."
    )
    aggregate_paths: bool = Field(
        True,
        description="Sum confidence per answer and return the best path of the "
        "winning answer; false: the single most confident path.",
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=64, description="Forbid repeating any n-gram of this size in a path (0: off)."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Ignored: every path is greedy.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Ignored: every path is greedy.")
    length_penalty: float = Field(1.0, description="Ignored: only beam search uses it.")
    early_stopping: bool = Field(False, description="Ignored: only beam search uses it.")


@dataclass(frozen=True)
class DecodedPath:
    """One greedy path: its tokens (the first token included), text, normalised answer and confidence."""

    first_token: str
    tokens: list[int]
    text: str
    answer: str | None  # normalised answer; None when the path commits to none
    confidence: float
    finish_reason: str  # "stop" (end of sequence) or "length"

    @property
    def key(self) -> str:
        """What paths vote on: the answer, else the whole (trimmed) text."""
        return self.answer if self.answer is not None else NO_ANSWER_KEY + self.text.strip()


def token_margins(logits: Any) -> list[float]:
    """Per row of logits [rows, vocab]: p(top1) - p(top2) of softmax(logits), the paper's confidence margin."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    if probs.shape[-1] < 2:
        return probs.max(dim=-1).values.tolist()
    top = torch.topk(probs, 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


def token_offsets(tokenizer: Any, tokens: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of `tokens` and the character span each token produced (empty while a character is incomplete)."""
    detok = Detokenizer(tokenizer)
    spans: list[tuple[int, int]] = []
    for token in tokens:
        start = len(detok.text)
        detok.add(token)
        spans.append((start, len(detok.text)))
    detok.flush()
    if spans and len(detok.text) > spans[-1][1]:  # held bytes completed at the end belong to the last token
        spans[-1] = (spans[-1][0], len(detok.text))
    return detok.text, spans


def answer_span(text: str) -> tuple[str | None, tuple[int, int] | None]:
    """The normalised answer of `text` and where it is (its last occurrence); (None, None) without one."""
    found = extract_answer(text)
    if found is None:
        return None, None
    answer = normalize_answer(found.answer) or None
    whole = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(found.answer)}(?!\w)", text)]
    start = whole[-1] if whole else text.rfind(found.answer)  # prefer "4" as a word over the 4 of "14"
    return answer, ((start, start + len(found.answer)) if start >= 0 else None)


def path_confidence(
    margins: Sequence[float], spans: Sequence[tuple[int, int]], answer: tuple[int, int] | None
) -> float:
    """Mean margin over the tokens that overlap the answer's characters; over all tokens without an answer."""
    if not margins:
        return 0.0
    chosen = [m for m, (s, e) in zip(margins, spans) if answer is not None and s < answer[1] and e > answer[0]]
    picked = chosen or list(margins)
    return sum(picked) / len(picked)


def choose_path(paths: Sequence[DecodedPath], aggregate: bool) -> tuple[int, dict[str, float]]:
    """Index of the path to return, and the summed confidence per vote key (empty without aggregation).

    Ties go to the earlier path, i.e. the one whose first token was more likely."""
    if not paths:
        raise ValueError("no paths to choose from")
    if not aggregate:
        return max(range(len(paths)), key=lambda i: (paths[i].confidence, -i)), {}
    scores: dict[str, float] = {}
    for path in paths:
        scores[path.key] = scores.get(path.key, 0.0) + path.confidence
    winner = max(scores, key=lambda key: scores[key])  # dicts keep insertion order: ties go to the earlier key
    members = [i for i, path in enumerate(paths) if path.key == winner]
    return max(members, key=lambda i: (paths[i].confidence, -i)), scores


class NgramIndex:
    """The n-grams of a growing sequence, to forbid repeating one (transformers' no_repeat_ngram_size)."""

    def __init__(self, size: int, sequence: Sequence[int] = ()) -> None:
        self.size = size
        self.sequence: list[int] = []
        self.seen: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> the tokens that followed it
        for token in sequence:
            self.add(token)

    def add(self, token: int) -> None:
        self.sequence.append(token)
        if len(self.sequence) >= self.size:
            head = tuple(self.sequence[len(self.sequence) - self.size : -1])
            self.seen.setdefault(head, set()).add(token)

    def banned(self) -> list[int]:
        """The tokens that would complete an n-gram already in the sequence."""
        if len(self.sequence) + 1 < self.size:
            return []
        return sorted(self.seen.get(tuple(self.sequence[len(self.sequence) - self.size + 1 :]), ()))

    def copy(self) -> NgramIndex:
        twin = NgramIndex(self.size)
        twin.sequence = list(self.sequence)
        twin.seen = {head: set(tokens) for head, tokens in self.seen.items()}
        return twin


def banned_tokens(sequence: Sequence[int], size: int) -> list[int]:
    """Tokens that would repeat an n-gram (n = size) of `sequence`; none when size is 0."""
    return NgramIndex(size, sequence).banned() if size > 0 else []


class _Paths:
    """The k rows while they decode: greedy picks (with the n-gram ban), tokens and per-token margins."""

    def __init__(self, prompt: Sequence[int], first: Sequence[int], first_margin: float, ngram: int) -> None:
        self.tokens = [[t] for t in first]
        self.margins = [[first_margin] for _ in first]
        self.step_margins: dict[int, float] = {}  # row -> margin of the distribution its next token comes from
        self.ngrams: list[NgramIndex] | None = None
        if ngram > 0:
            shared = NgramIndex(ngram, prompt)
            self.ngrams = [shared.copy() for _ in first]
            for index, token in zip(self.ngrams, first):
                index.add(token)

    def pick(self, logits: Any, alive: list[int]) -> Any:
        self.step_margins = dict(zip(alive, token_margins(logits)))
        if self.ngrams is not None:
            logits = logits.clone()
            for pos, row in enumerate(alive):
                banned = self.ngrams[row].banned()
                if banned:
                    logits[pos, banned] = float("-inf")
        return logits.argmax(dim=-1)

    def after(self, row: int, token: int, logits: Any) -> str | None:
        self.tokens[row].append(token)
        self.margins[row].append(self.step_margins[row])
        if self.ngrams is not None:
            self.ngrams[row].add(token)
        return None


def first_tokens(logits: Any, k: int, eos_ids: frozenset[int]) -> list[int]:
    """The k most likely next tokens of one row, most likely first, end-of-sequence tokens left out."""
    import torch

    count = min(logits.shape[-1], k + len(eos_ids))
    ranked = torch.topk(logits, count, dim=-1).indices.tolist()
    return [t for t in ranked if t not in eos_ids][:k]


def decode_paths(ctx: DecodeContext, params: CotDecodingParams) -> list[DecodedPath]:
    """Steps 1-3: the k greedy paths, each with its answer and confidence."""
    max_tokens = ctx.max_tokens or params.max_tokens or DEFAULT_MAX_TOKENS
    limit = min(max_tokens, ctx.room(len(ctx.prompt)))
    if limit < 1:
        return []
    batch = ctx.prefill()
    first = first_tokens(batch.logits[0], params.k, ctx.lm.eos_ids)
    if not first:
        return []
    paths = _Paths(ctx.prompt, first, token_margins(batch.logits[:1])[0], params.no_repeat_ngram_size)
    reasons = ["length"] * len(first)
    if limit > 1 and not ctx.cancel.is_set():
        batch.select([0] * len(first))  # the k rows share the prompt's prefill
        batch.step(first)
        results = decode_rows(
            batch,
            limits=[limit - 1] * len(first),
            pick=paths.pick,
            eos_ids=ctx.lm.eos_ids,
            cancel=ctx.cancel,
            after=paths.after,
        )
        reasons = ["stop" if r.finish_reason == "stop" else "length" for r in results]
    return [
        _scored(ctx.lm.tokenizer, tokens, margins, reason)
        for tokens, margins, reason in zip(paths.tokens, paths.margins, reasons)
    ]


def _scored(tokenizer: Any, tokens: list[int], margins: list[float], finish_reason: str) -> DecodedPath:
    text, spans = token_offsets(tokenizer, tokens)
    answer, span = answer_span(text)
    return DecodedPath(
        first_token=token_text(tokenizer, tokens[0])[0],
        tokens=tokens,
        text=text,
        answer=answer,
        confidence=path_confidence(margins, spans, span),
        finish_reason=finish_reason,
    )


def run(ctx: DecodeContext, params: CotDecodingParams) -> DecodeResult:
    paths = decode_paths(ctx, params)
    if not paths:
        return DecodeResult(text="", completion_tokens=0, finish_reason="length", info={"paths": [], "chosen": None})
    chosen, scores = choose_path(paths, params.aggregate_paths)
    info = {
        "paths": [
            {
                "first_token": p.first_token,
                "text": p.text,
                "answer": p.answer,
                "confidence": p.confidence,
                "tokens": len(p.tokens),
                "finish_reason": p.finish_reason,
            }
            for p in paths
        ],
        "chosen": chosen,
        "aggregate_paths": params.aggregate_paths,
        "answer_scores": scores,
    }
    best = paths[chosen]
    return DecodeResult(
        text=best.text, completion_tokens=sum(len(p.tokens) for p in paths), finish_reason=best.finish_reason, info=info
    )


DECODER = Decoder(
    name="cot_decoding",
    params=CotDecodingParams,
    run=run,
    summary="Chain-of-thought decoding (arXiv 2402.10200): k greedy paths from the top-k first tokens, "
    "scored by the answer tokens' top-2 probability margin, voted by answer.",
    streams=False,
)
