"""`entropy_decoding`: sampling that adapts, token by token, to how uncertain the model is.

After entropix (github.com/xjdr-alt/entropix, `torch_sampler.py`; there is no paper). Before each
token, the entropy H = -sum p log p and the varentropy V = sum p (log p + H)^2 of the next-token
distribution (log-softmax of the float32 logits, in nats) pick one of five regimes:

- low H, low V ("flowing"): the model is sure; take the argmax.
- high H, low V ("treading carefully"): uniformly unsure; insert a pause (`PAUSE_TEXT`, encoded with
  the model's own tokenizer rather than a hard-coded token id) so the model can reconsider; when the
  pause was just inserted, sample hotter instead (T x 1.3, at most 1.5).
- high V, H below `high_entropy_threshold` ("exploring forks"): a few strong options; sample hotter
  (T x 1.2, at most 1.5) from a wider top-k (x 1.5, at least 5).
- high H, high V ("resampling in the mist"): sample at high temperature (at least 2.0, T x 2).
- otherwise ("adaptive"): with u = H + V in entropix's units (bits), T x (1 + 0.3 u) and
  min_p x (1 - 0.5 u) clamped to [0.01, 0.5]; draw `ADAPTIVE_CANDIDATES` tokens and keep the one
  the model finds most likely (raw log-probability).

Logit statistics only: entropix also reads last-layer attention statistics (attention entropy,
varentropy, head agreement, interaction strength). Those need `output_attentions`, i.e. eager
attention and, in OptILLM, a float32 copy of the model; without them this works with any attention
implementation (sdpa, flash) and dtype. The attention terms of entropix's formulas are left out: they
adjust top-p and top-k in the adaptive and resampling regimes (which therefore keep their base values)
and add the same confidence bonus to every adaptive candidate (so the candidate choice is by
log-probability alone, as here). Sampling cuts come from `optigraph.local.sampling.filtered_probs`,
where min-p really filters (OptILLM applies it after the probabilities are taken, to no effect).

Parameters (OptILLM's body keys, then the regime thresholds):
- `top_k` (27), `min_p` (0.03), `top_p` (0.90): the base sampling cuts.
- `temperature` (0.666, entropix's): the base temperature; a temperature the client set wins
  (0 or a top-p of 0 means greedy: every token is the argmax, the regimes are still reported).
- `max_tokens` (4096 when the client gives none): also bounded by the room left in the context.
- `seed`: the request's seed; the same seed gives the same output (OptILLM's default is 1337; here
  no seed means fresh randomness).
- `low_entropy_threshold`, `low_varentropy_threshold` (0.1 bit, 0.1 bit^2), `pause_entropy_threshold`
  (3.0 bits), `high_entropy_threshold`, `high_varentropy_threshold` (5.0 bits, 5.0 bits^2):
  entropix's thresholds, converted to nats (x ln 2 for entropy, x (ln 2)^2 for varentropy).

Cost: one forward pass per token, as plain sampling; the text streams as it is produced.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult
from optigraph.local.loop import decode_rows
from optigraph.local.sampling import Sampling, filtered_probs
from optigraph.local.text import Detokenizer

LN_2 = math.log(2)
DEFAULT_MAX_TOKENS = 4096  # OptILLM's default when the client gives no max_tokens
DEFAULT_TEMPERATURE = 0.666  # entropix's
DEFAULT_TOP_P = 0.90  # entropix's
PAUSE_TEXT = "..."  # inserted when the model is uniformly unsure: a neutral hesitation in any tokenizer
ADAPTIVE_CANDIDATES = 5  # tokens drawn in the adaptive regime, the most likely kept (entropix: 5)


class EntropyDecodingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    top_k: int = Field(27, ge=1, le=1000, description="Base top-k cut (widened when exploring).")
    min_p: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="Base min-p cut: drop tokens below min_p x the top "
        "probability (scaled in the adaptive regime; 0: off).",
    )
    temperature: float | None = Field(
        DEFAULT_TEMPERATURE, ge=0.0, le=2.0, description="Base temperature; the client's temperature when it set one."
    )
    top_p: float | None = Field(
        DEFAULT_TOP_P, ge=0.0, le=1.0, description="Base top-p cut; the client's top_p when it set one."
    )
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1, description="Token limit when the client gives none.")
    seed: int | None = Field(None, description="The request's seed: the same seed gives the same output.")
    low_entropy_threshold: float = Field(
        0.1 * LN_2, ge=0.0, description="Entropy (nats) below which the model counts as sure."
    )
    low_varentropy_threshold: float = Field(
        0.1 * LN_2**2, ge=0.0, description="Varentropy (nats^2) below which the distribution counts as flat."
    )
    pause_entropy_threshold: float = Field(
        3.0 * LN_2, ge=0.0, description="Entropy (nats) above which a flat distribution triggers the pause."
    )
    high_entropy_threshold: float = Field(
        5.0 * LN_2, ge=0.0, description="Entropy (nats) separating exploring (below) from resampling (above)."
    )
    high_varentropy_threshold: float = Field(
        5.0 * LN_2**2, ge=0.0, description="Varentropy (nats^2) above which the model explores or resamples."
    )


class Regime(str, Enum):
    ARGMAX = "argmax"  # low entropy, low varentropy
    PAUSE = "pause"  # high entropy, low varentropy
    EXPLORE = "explore"  # high varentropy, entropy below the high threshold
    RESAMPLE = "resample"  # high entropy, high varentropy
    ADAPTIVE = "adaptive"  # everything else


def entropy_varentropy(logits: Any) -> tuple[Any, Any]:
    """Entropy and varentropy (nats, nats^2) of softmax(logits) over the last dimension; -inf logits are fine."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    finite = probs > 0  # a -inf logit: probability 0, and 0 x inf must count as 0
    entropy = -torch.where(finite, probs * logp, 0.0).sum(-1)
    varentropy = torch.where(finite, probs * (logp + entropy.unsqueeze(-1)) ** 2, 0.0).sum(-1)
    return entropy, varentropy


def regime(entropy: float, varentropy: float, params: EntropyDecodingParams) -> Regime:
    """The regime of a next-token distribution with these statistics (entropix's order of tests)."""
    if entropy < params.low_entropy_threshold and varentropy < params.low_varentropy_threshold:
        return Regime.ARGMAX
    if entropy > params.pause_entropy_threshold and varentropy < params.low_varentropy_threshold:
        return Regime.PAUSE
    if entropy < params.high_entropy_threshold and varentropy > params.high_varentropy_threshold:
        return Regime.EXPLORE
    if entropy > params.high_entropy_threshold and varentropy > params.high_varentropy_threshold:
        return Regime.RESAMPLE
    return Regime.ADAPTIVE


def regime_sampling(kind: Regime, entropy: float, varentropy: float, base: Sampling) -> Sampling:
    """How to sample in a regime (PAUSE: the hotter draw after a pause); entropix's formulas without attention."""
    if kind is Regime.PAUSE:
        return Sampling(min(1.5, base.temperature * 1.3), base.top_p, base.top_k, base.min_p)
    if kind is Regime.EXPLORE:
        return Sampling(min(1.5, base.temperature * 1.2), base.top_p, max(5, int(base.top_k * 1.5)), base.min_p)
    if kind is Regime.RESAMPLE:
        return Sampling(max(2.0, base.temperature * 2.0), base.top_p, base.top_k, base.min_p)
    if kind is Regime.ADAPTIVE:
        uncertainty = entropy / LN_2 + varentropy / LN_2**2  # entropix's coefficients are for bits
        min_p = min(0.5, max(0.01, base.min_p * (1 - 0.5 * uncertainty))) if base.min_p > 0 else 0.0
        return Sampling(base.temperature * (1 + 0.3 * uncertainty), base.top_p, base.top_k, min_p)
    return Sampling(temperature=0.0)


def draw(logits: Any, sampling: Sampling, generator: Any, candidates: int = 1) -> int:
    """One token from one row of logits: `candidates` draws, the one with the highest raw log-probability kept."""
    import torch

    if sampling.greedy:
        return int(logits.argmax())
    probs = filtered_probs(logits.unsqueeze(0), sampling)[0]
    drawn = torch.multinomial(probs, candidates, replacement=True, generator=generator)
    scores = torch.log_softmax(logits.float(), dim=-1)[drawn]
    return int(drawn[int(scores.argmax())])


def _or(value: float | None, default: float) -> float:
    return value if value is not None else default


class _EntropySampler:
    """The state of one decoding: pause tokens still to insert, the text so far, and per-regime statistics."""

    def __init__(self, ctx: DecodeContext, params: EntropyDecodingParams) -> None:
        explicit = ctx.explicit  # the client's own choices win; a null in the body is no choice
        temperature = (
            ctx.sampling.temperature if "temperature" in explicit else _or(params.temperature, DEFAULT_TEMPERATURE)
        )
        top_p = ctx.sampling.top_p if "top_p" in explicit else _or(params.top_p, DEFAULT_TOP_P)
        self.base = Sampling(temperature=temperature, top_p=top_p, top_k=params.top_k, min_p=params.min_p)
        self.params = params
        self.generator = ctx.generator
        self.emit = ctx.emit
        self.pause = list(ctx.lm.tokenizer(PAUSE_TEXT, add_special_tokens=False)["input_ids"])
        self.pending: list[int] = []  # pause tokens still to insert
        self.tokens: list[int] = []
        self.detok = Detokenizer(ctx.lm.tokenizer)
        self.counts = {kind.value: 0 for kind in Regime}
        self.pauses = 0
        self.entropy_sum = 0.0
        self.varentropy_sum = 0.0

    def pick(self, logits: Any, alive: list[int]) -> Any:
        import torch

        return torch.tensor([self.next_token(logits[0])], dtype=torch.long)

    def next_token(self, logits: Any) -> int:
        if self.pending:
            return self.pending.pop(0)
        entropy, varentropy = (float(x) for x in entropy_varentropy(logits))
        kind = regime(entropy, varentropy, self.params)
        self.counts[kind.value] += 1
        self.entropy_sum += entropy
        self.varentropy_sum += varentropy
        if self.base.greedy or kind is Regime.ARGMAX:
            return int(logits.argmax())
        if kind is Regime.PAUSE and self.pause and not self.just_paused():
            self.pauses += 1
            self.pending = self.pause[1:]
            return self.pause[0]
        count = ADAPTIVE_CANDIDATES if kind is Regime.ADAPTIVE else 1
        return draw(logits, regime_sampling(kind, entropy, varentropy, self.base), self.generator, count)

    def just_paused(self) -> bool:
        return len(self.tokens) >= len(self.pause) and self.tokens[-len(self.pause) :] == self.pause

    def after(self, row: int, token: int, logits: Any) -> str | None:
        self.tokens.append(token)
        self.send(self.detok.add(token))
        return None

    def finish(self) -> str:
        self.send(self.detok.flush())
        return self.detok.text

    def send(self, piece: str) -> None:
        if piece and self.emit is not None:
            self.emit(piece)

    def info(self) -> dict[str, Any]:
        decided = sum(self.counts.values())
        return {
            "regimes": dict(self.counts),
            "pauses": self.pauses,
            "pause_text": PAUSE_TEXT,
            "mean_entropy": self.entropy_sum / decided if decided else 0.0,
            "mean_varentropy": self.varentropy_sum / decided if decided else 0.0,
            "units": "nats",
            "temperature": self.base.temperature,
            "top_p": self.base.top_p,
        }


def run(ctx: DecodeContext, params: EntropyDecodingParams) -> DecodeResult:
    max_tokens = ctx.max_tokens or params.max_tokens or DEFAULT_MAX_TOKENS
    limit = min(max_tokens, ctx.room(len(ctx.prompt)))
    sampler = _EntropySampler(ctx, params)
    if limit < 1 or ctx.cancel.is_set():
        return DecodeResult(text="", completion_tokens=0, finish_reason="length", info=sampler.info())
    result = decode_rows(
        ctx.prefill(), limits=[limit], pick=sampler.pick, eos_ids=ctx.lm.eos_ids, cancel=ctx.cancel, after=sampler.after
    )[0]
    text = sampler.finish()
    return DecodeResult(
        text=text,
        completion_tokens=len(result.tokens),
        finish_reason="stop" if result.finish_reason == "stop" else "length",
        info=sampler.info(),
    )


DECODER = Decoder(
    name="entropy_decoding",
    params=EntropyDecodingParams,
    run=run,
    summary="Entropy-based sampling after entropix: per token, the entropy and varentropy of the logits choose "
    "argmax, a pause, exploration, high-temperature resampling or adaptive best-of-5 sampling.",
    streams=True,
)
