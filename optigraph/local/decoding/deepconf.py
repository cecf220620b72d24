"""`deepconf`: many sampled reasoning traces, the unconfident ones stopped early, a confidence-weighted vote.

Fu, Wang, Tian & Zhao, "Deep Think with Confidence" (arXiv 2508.15260). A trace's confidence is
read off the model's own next-token distributions; low-confidence traces are cut short (online) or
left out (offline), and the rest vote with their confidence as weight.

Measures (the paper's, from the raw logits, before temperature):
- token confidence: minus the mean log-probability of the `confidence_top_k` most likely tokens
  (high when the distribution is peaked);
- group confidence at a token: the mean token confidence over the `window_size` tokens ending there
  (fewer at the start of a trace);
- trace confidence (`confidence_metric`): `average_confidence` (mean token confidence),
  `bottom_10_percent` (mean of the lowest 10% of the full-window group confidences), `lowest_group`
  (the lowest of them), `tail` (mean token confidence of the last `window_size` tokens). A trace
  shorter than a window has one group: the whole trace.

Online mode (the paper's DeepConf-low / -high):
1. Warm-up: `warmup_samples` traces, decoded together in one batch that shares the prompt's prefill.
2. Stopping threshold: the 90th (`variant` low: keep the top 10%) or 10th (high: keep 90%) percentile
   of the warm-up traces' lowest group confidence, taken over the tokens where the stopping rule
   applies (from `min_trace_length` on), so the threshold and the rule measure the same thing.
3. More traces, `trace_batch_size` at a time (batched), each ended as soon as its group confidence
   falls below the threshold once it has `min_trace_length` tokens; an ended trace does not vote.
   After each batch, generation stops when the leading answer holds `consensus_threshold` of the
   confidence-weighted votes, or when `max_traces` traces were generated.
4. Answer: confidence-weighted majority vote (weight = the trace's `confidence_metric`) over the
   answers found by `optigraph.core.answers` (boxed, "final answer", the last number...); traces with
   no answer are grouped by text similarity (`optigraph.nodes.vote.group_answers`).
Offline mode: `max_traces` full traces (batched); the top 10% (low) or 90% (high) by trace
confidence vote.

Better than OptILLM's version: traces are batched (OptILLM runs up to 128 one by one); the answer is
the winning answer's most confident full trace, not the text after its last period; the vote groups by
extracted answer.

Parameters (OptILLM's body keys; `confidence_top_k`, `mode`, `trace_batch_size` are ours):
- `variant` ("low"): low keeps the top 10% of traces (aggressive), high keeps 90%.
- `warmup_samples` (16), `max_traces` (128), `consensus_threshold` (0.95): see above.
- `window_size` (2048): tokens per group; also the tail length.
- `min_trace_length` (100): tokens before a trace may be stopped early.
- `max_tokens_per_trace` (4096): bounded by the client's `max_tokens` when given and by the context.
- `confidence_metric` ("average_confidence"): the trace confidence used to weight votes and to filter
  offline ("lowest_group_confidence", "tail_confidence", "bottom_10_percent_confidence" are accepted).
- `include_stats` (false): add every trace's length, confidence and answer to `info`.
- `temperature` (the client's when set, else 0.7): sampling temperature of the traces.
- `confidence_top_k` (5): tokens per token confidence (OptILLM cannot set it).
- `mode` ("online"), `trace_batch_size` (8): traces decoded together after the warm-up.

Cost: `completion_tokens` counts every token of every trace; `prompt_tokens` the prompt once per
batch of traces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from optigraph.core.answers import extract_normalized
from optigraph.core.votes import group_answers
from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult
from optigraph.local.loop import decode_rows
from optigraph.local.sampling import Sampling, choose
from optigraph.local.text import decode

DEFAULT_TEMPERATURE = 0.7
KEEP_PERCENT = {"low": 10.0, "high": 90.0}  # variant -> % of traces kept (above the threshold, or offline)
BOTTOM_SHARE = 0.10  # of the group confidences, for `bottom_10_percent`
LOW_CONFIDENCE = "low_confidence"  # finish reason of a trace stopped early
FILTERED = "filtered"  # finish reason of an offline trace below the kept share
VOTING_REASONS = ("stop", "length")  # traces that ran their course vote
METRICS = ("average_confidence", "bottom_10_percent", "lowest_group", "tail")
METRIC_ALIASES = {
    "average": "average_confidence",
    "mean_confidence": "average_confidence",
    "bottom_10_percent_confidence": "bottom_10_percent",
    "bottom_percent": "bottom_10_percent",
    "lowest_group_confidence": "lowest_group",
    "tail_confidence": "tail",
}
Metric = Literal["average_confidence", "bottom_10_percent", "lowest_group", "tail"]


class DeepConfParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    variant: Literal["low", "high"] = Field(
        "low",
        description="low: keep the top 10% of traces by confidence "
        "(90th-percentile threshold); high: keep 90% (10th percentile).",
    )
    mode: Literal["online", "offline"] = Field(
        "online",
        description="online: warm-up, then traces stopped early "
        "below the threshold, until consensus; offline: all traces, top "
        "share filtered, then the vote.",
    )
    warmup_samples: int = Field(16, ge=1, le=256, description="Warm-up traces (one batch) that set the threshold.")
    consensus_threshold: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Stop once the leading answer holds this share of the confidence-weighted votes.",
    )
    max_traces: int = Field(128, ge=1, le=1024, description="Most traces in all, warm-up included.")
    window_size: int = Field(2048, ge=1, le=65_536, description="Tokens per group confidence (sliding window).")
    min_trace_length: int = Field(100, ge=1, le=65_536, description="Tokens before a trace may be stopped early.")
    max_tokens_per_trace: int = Field(
        4096,
        ge=1,
        le=1 << 20,
        description="Token limit per trace (also bounded by the client's max_tokens and the context).",
    )
    confidence_metric: Metric = Field(
        "average_confidence",
        description="Trace confidence weighting the votes: "
        "average_confidence, bottom_10_percent, lowest_group or tail.",
    )
    include_stats: bool = Field(False, description="Add every trace's length, confidence and answer to the details.")
    temperature: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description=f"Trace sampling temperature (the client's; {DEFAULT_TEMPERATURE} when none is given).",
    )
    confidence_top_k: int = Field(5, ge=1, le=100, description="Most likely tokens averaged in a token confidence.")
    trace_batch_size: int = Field(8, ge=1, le=256, description="Traces decoded together after the warm-up.")

    @field_validator("confidence_metric", mode="before")
    @classmethod
    def _metric_alias(cls, value: Any) -> Any:
        return METRIC_ALIASES.get(value, value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Trace:
    tokens: list[int]
    confidences: list[float]  # one per token
    text: str
    finish_reason: str  # "stop", "length", LOW_CONFIDENCE or "cancelled"
    warmup: bool = False
    answer: str | None = None  # normalised extracted answer
    score: float = 0.0  # trace confidence by the chosen metric

    @property
    def votes(self) -> bool:
        return self.finish_reason in VOTING_REASONS


@dataclass(frozen=True)
class WeightedVote:
    winner: int  # the most confident trace of the winning answer (position in the voted sequence)
    key: str  # the winning answer (or the first member's text for a free-text group)
    extracted: bool  # whether `key` is an extracted answer
    share: float  # the winner's share of the total weight
    weights: dict[str, float]  # total weight per group key


# -- confidence -------------------------------------------------------------------------------------


def token_confidences(logits: Any, k: int) -> Any:
    """Per row of `logits` [rows, vocab]: minus the mean log-probability of its k most likely tokens."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -torch.topk(logp, min(k, logp.shape[-1]), dim=-1).values.mean(dim=-1)


def group_confidences(confidences: Sequence[float], window: int, start: int = 0) -> list[float]:
    """The group confidence at each position from `start` on: the mean over the `window` tokens ending
    there (fewer at the start of the trace). Empty for an empty trace; a `start` past the end means the
    last position."""
    if not confidences:
        return []
    prefix = [0.0]
    for value in confidences:
        prefix.append(prefix[-1] + value)
    first = min(start, len(confidences) - 1)
    return [
        (prefix[t + 1] - prefix[max(0, t + 1 - window)]) / min(window, t + 1) for t in range(first, len(confidences))
    ]


def trace_confidence(confidences: Sequence[float], metric: str, window: int) -> float:
    """A trace's confidence by `metric` (see the module doc); 0 for an empty trace."""
    if not confidences:
        return 0.0
    if metric == "average_confidence":
        return sum(confidences) / len(confidences)
    if metric == "tail":
        tail = confidences[-window:]
        return sum(tail) / len(tail)
    groups = group_confidences(confidences, window, start=window - 1)  # full windows only
    if metric == "lowest_group":
        return min(groups)
    if metric == "bottom_10_percent":
        lowest = sorted(groups)[: max(1, math.ceil(BOTTOM_SHARE * len(groups)))]
        return sum(lowest) / len(lowest)
    raise ValueError(f"unknown confidence metric {metric!r}: one of {', '.join(METRICS)}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stop_threshold(warmup: Sequence[Sequence[float]], variant: str, window: int, min_length: int) -> float | None:
    """The early-stopping threshold: the (100 - keep%) percentile of the warm-up traces' lowest group
    confidence from `min_length` tokens on; None without a non-empty warm-up trace."""
    lowest = [min(group_confidences(c, window, start=min_length - 1)) for c in warmup if c]
    return percentile(lowest, 100.0 - KEEP_PERCENT[variant]) if lowest else None


def top_share(scores: Sequence[float], variant: str) -> list[int]:
    """Offline filter: positions of the top keep% scores (at least one), in their original order."""
    keep = max(1, math.ceil(len(scores) * KEEP_PERCENT[variant] / 100.0))
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])


# -- the vote ---------------------------------------------------------------------------------------


def weighted_vote(answers: Sequence[str | None], texts: Sequence[str], weights: Sequence[float]) -> WeightedVote:
    """Confidence-weighted majority: the group with the largest total weight wins (ties: the earlier
    group); its member with the largest weight is the winner."""
    if not texts:
        raise ValueError("nothing to vote on")
    groups = group_answers(answers, texts)
    totals = {g.key: sum(max(0.0, weights[i]) for i in g.members) for g in groups}
    best = max(groups, key=lambda g: (totals[g.key], -g.members[0]))
    total = sum(totals.values())
    share = totals[best.key] / total if total > 0 else len(best.members) / len(texts)
    winner = max(best.members, key=lambda i: (weights[i], -i))
    return WeightedVote(winner=winner, key=best.key, extracted=best.extracted, share=share, weights=totals)


def voting(traces: Sequence[Trace]) -> list[Trace]:
    """The traces that vote: those that finished; traces cut at the token limit only when none
    finished (a cut trace's last number is unfinished work, not its answer)."""
    finished = [t for t in traces if t.finish_reason == "stop"]
    return finished or [t for t in traces if t.votes]


def vote_traces(traces: Sequence[Trace]) -> WeightedVote | None:
    if not traces:
        return None
    return weighted_vote([t.answer for t in traces], [t.text for t in traces], [t.score for t in traces])


# -- generation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSettings:
    limit: int  # tokens per trace
    sampling: Sampling
    top_k: int
    window: int
    min_length: int
    metric: str


class _Rows:
    """Per-row token confidences while a batch decodes, and the early-stopping rule."""

    def __init__(self, ctx: DecodeContext, rows: int, settings: TraceSettings, threshold: float | None) -> None:
        self.ctx, self.settings, self.threshold = ctx, settings, threshold
        self.confidences: list[list[float]] = [[] for _ in range(rows)]
        self.window_sums = [0.0] * rows

    def pick(self, logits: Any, alive: list[int]) -> Any:
        for row, value in zip(alive, token_confidences(logits, self.settings.top_k).tolist()):
            self.confidences[row].append(value)
        return choose(logits, self.settings.sampling, self.ctx.generator)

    def after(self, row: int, token: int, logits: Any) -> str | None:
        series, window = self.confidences[row], self.settings.window
        self.window_sums[row] += series[-1] - (series[-1 - window] if len(series) > window else 0.0)
        if self.threshold is None or len(series) < self.settings.min_length:
            return None
        return LOW_CONFIDENCE if self.window_sums[row] / min(window, len(series)) < self.threshold else None


def sample_traces(
    ctx: DecodeContext, count: int, settings: TraceSettings, threshold: float | None = None, warmup: bool = False
) -> list[Trace]:
    """`count` traces decoded together over one prefill of the prompt; with a threshold, each is stopped
    early when its group confidence falls below it."""
    batch = ctx.prefill()
    if count > 1:
        batch.select([0] * count)
    rows = _Rows(ctx, count, settings, threshold)
    results = decode_rows(
        batch,
        limits=[settings.limit] * count,
        pick=rows.pick,
        eos_ids=ctx.lm.eos_ids,
        cancel=ctx.cancel,
        after=rows.after,
    )
    traces = []
    for result, confidences in zip(results, rows.confidences):
        text = decode(ctx.lm.tokenizer, result.tokens)
        conf = confidences[: len(result.tokens)]  # an end-of-sequence step has a confidence but no token
        traces.append(
            Trace(
                tokens=result.tokens,
                confidences=conf,
                text=text,
                finish_reason=result.finish_reason,
                warmup=warmup,
                answer=extract_normalized(text),
                score=trace_confidence(conf, settings.metric, settings.window),
            )
        )
    return traces


def trace_settings(ctx: DecodeContext, params: DeepConfParams) -> TraceSettings:
    limit = min(params.max_tokens_per_trace, ctx.room(len(ctx.prompt)))
    if ctx.max_tokens is not None:
        limit = min(limit, ctx.max_tokens)
    temperature = params.temperature if params.temperature is not None else DEFAULT_TEMPERATURE
    return TraceSettings(
        limit=limit,
        sampling=dataclasses.replace(ctx.sampling, temperature=temperature),
        top_k=params.confidence_top_k,
        window=params.window_size,
        min_length=params.min_trace_length,
        metric=params.confidence_metric,
    )


Generated = tuple[list[Trace], dict[str, Any]]  # the traces, and how generation went


def run_online(ctx: DecodeContext, params: DeepConfParams, settings: TraceSettings) -> Generated:
    """Warm-up, threshold, then batches of early-stopped traces until consensus or `max_traces`."""
    traces = sample_traces(ctx, min(params.warmup_samples, params.max_traces), settings, warmup=True)
    threshold = stop_threshold([t.confidences for t in traces], params.variant, settings.window, settings.min_length)
    stopped_by, batches = "max_traces", 1
    while True:
        vote = vote_traces(voting(traces))
        if vote is not None and vote.share >= params.consensus_threshold:
            stopped_by = "consensus"
            break
        if ctx.cancel.is_set():
            stopped_by = "cancelled"
            break
        if len(traces) >= params.max_traces:
            break
        count = min(params.trace_batch_size, params.max_traces - len(traces))
        traces += sample_traces(ctx, count, settings, threshold)
        batches += 1
    return traces, {"threshold": threshold, "stopped_by": stopped_by, "batches": batches}


def run_offline(ctx: DecodeContext, params: DeepConfParams, settings: TraceSettings) -> Generated:
    """Every trace in full, then only the top share by confidence votes."""
    traces: list[Trace] = []
    batches = 0
    while len(traces) < params.max_traces and not ctx.cancel.is_set():
        traces += sample_traces(ctx, min(params.trace_batch_size, params.max_traces - len(traces)), settings)
        batches += 1
    finished = [i for i, t in enumerate(traces) if t.votes]
    kept = {finished[i] for i in top_share([traces[i].score for i in finished], params.variant)} if finished else set()
    traces = [
        dataclasses.replace(t, finish_reason=FILTERED) if t.votes and i not in kept else t for i, t in enumerate(traces)
    ]
    stopped_by = "cancelled" if ctx.cancel.is_set() else "max_traces"
    threshold = min((traces[i].score for i in kept), default=None)  # the lowest kept confidence
    return traces, {"threshold": threshold, "stopped_by": stopped_by, "batches": batches}


def _stats(traces: Sequence[Trace]) -> list[dict[str, Any]]:
    return [
        {
            "tokens": len(t.tokens),
            "confidence": t.score,
            "answer": t.answer,
            "finish_reason": t.finish_reason,
            "warmup": t.warmup,
        }
        for t in traces
    ]


def run(ctx: DecodeContext, params: DeepConfParams) -> DecodeResult:
    settings = trace_settings(ctx, params)
    info: dict[str, Any] = {
        "mode": params.mode,
        "variant": params.variant,
        "confidence_metric": params.confidence_metric,
    }
    if settings.limit < 1:
        return DecodeResult(text="", completion_tokens=0, finish_reason="length", info={**info, "traces": 0})
    runner = run_online if params.mode == "online" else run_offline
    traces, details = runner(ctx, params, settings)
    voters = voting(traces)
    vote = vote_traces(voters)
    info.update(
        details,
        traces=len(traces),
        early_stopped=sum(t.finish_reason == LOW_CONFIDENCE for t in traces),
        voting_traces=len(voters),
        answer=vote.key if vote is not None and vote.extracted else None,
        vote_share=vote.share if vote is not None else None,
    )
    if params.include_stats:
        info["trace_stats"] = _stats(traces)
    spent = sum(len(t.tokens) for t in traces)
    extra_prompts = len(ctx.prompt) * max(0, details["batches"] - 1)  # the backend counts the first
    if vote is None:
        return DecodeResult(
            text="", completion_tokens=spent, finish_reason="length", prompt_tokens=extra_prompts, info=info
        )
    best = voters[vote.winner]
    return DecodeResult(
        text=best.text,
        completion_tokens=spent,
        finish_reason=best.finish_reason,
        prompt_tokens=extra_prompts,
        info=info,
    )


DECODER = Decoder(
    name="deepconf",
    params=DeepConfParams,
    run=run,
    summary="Deep Think with Confidence (arXiv 2508.15260): batched sampled traces, each stopped early when its "
    "sliding-window token confidence drops below a warm-up percentile; confidence-weighted answer vote.",
    streams=False,
)
