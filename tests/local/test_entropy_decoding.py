"""entropy_decoding on the tiny model: logit statistics, regimes, pauses, seeds, streaming, limits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from optigraph.local.decoding.entropy_decoding import (
    DECODER,
    LN_2,
    PAUSE_TEXT,
    EntropyDecodingParams,
    Regime,
    draw,
    entropy_varentropy,
    regime,
    regime_sampling,
)
from optigraph.local.sampling import Sampling, make_generator

VOCAB = 400
ALWAYS_PAUSE = {"low_entropy_threshold": 0.0, "pause_entropy_threshold": 0.0, "low_varentropy_threshold": 1e9}
ALWAYS_ARGMAX = {"low_entropy_threshold": 1e9, "low_varentropy_threshold": 1e9}


def _mixture(top: float, rest: int, vocab: int = VOCAB) -> torch.Tensor:
    """Logits of: one token with probability `top`, the rest spread evenly over `rest` tokens, others impossible."""
    probs = torch.zeros(vocab)
    probs[0] = top
    probs[1 : rest + 1] = (1 - top) / rest
    return torch.log(probs)


def _stats(logits: torch.Tensor) -> tuple[float, float]:
    entropy, varentropy = entropy_varentropy(logits)
    return float(entropy), float(varentropy)


def _greedy(lm: Any, ids: list[int], new_tokens: int) -> str:
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=sorted(lm.eos_ids),
            pad_token_id=lm.pad_id,
        )
    return lm.tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)


def test_entropy_and_varentropy_match_a_manual_computation() -> None:
    logits = np.array([[2.0, 1.0, 0.5, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [9.0, -2.0, 0.3, 4.0, 1.0]])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    info = -np.log(p)  # surprisal, nats
    entropy = (p * info).sum(-1)
    varentropy = (p * (info - entropy[:, None]) ** 2).sum(-1)
    got_entropy, got_varentropy = entropy_varentropy(torch.tensor(logits, dtype=torch.float32))
    np.testing.assert_allclose(got_entropy.numpy(), entropy, rtol=1e-5)
    np.testing.assert_allclose(got_varentropy.numpy(), varentropy, rtol=1e-4, atol=1e-6)
    assert got_entropy[1] == pytest.approx(math.log(5)) and got_varentropy[1] == pytest.approx(0.0, abs=1e-6)


def test_impossible_tokens_do_not_poison_the_statistics() -> None:
    entropy, varentropy = _stats(torch.tensor([0.0, 0.0, float("-inf"), float("-inf")]))
    assert entropy == pytest.approx(math.log(2)) and varentropy == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        (torch.zeros(VOCAB).index_fill(0, torch.tensor([0]), 30.0), Regime.ARGMAX),  # peaked
        (torch.zeros(VOCAB), Regime.PAUSE),  # flat over the whole vocabulary: ln 400 nats, no varentropy
        (torch.zeros(VOCAB).masked_fill(torch.arange(VOCAB) >= 4, float("-inf")), Regime.ADAPTIVE),  # flat over 4
        (_mixture(0.9, 399), Regime.EXPLORE),  # one strong option and a long tail
        (_mixture(0.3, 99_999, vocab=100_000), Regime.RESAMPLE),  # unsure, and the tail is huge
    ],
)
def test_regimes_on_constructed_logits(logits: torch.Tensor, expected: Regime) -> None:
    entropy, varentropy = _stats(logits)
    assert regime(entropy, varentropy, EntropyDecodingParams()) is expected


def test_thresholds_are_entropix_values_in_nats() -> None:
    params = EntropyDecodingParams()
    assert params.low_entropy_threshold == pytest.approx(0.1 * LN_2)
    assert params.pause_entropy_threshold == pytest.approx(3.0 * LN_2)
    assert params.high_varentropy_threshold == pytest.approx(5.0 * LN_2**2)


def test_regime_sampling_is_hotter_where_the_model_is_unsure() -> None:
    base = Sampling(temperature=0.666, top_p=0.9, top_k=27, min_p=0.03)
    assert regime_sampling(Regime.RESAMPLE, 5.0, 5.0, base).temperature >= 2.0
    explore = regime_sampling(Regime.EXPLORE, 1.0, 3.0, base)
    assert explore.temperature > base.temperature and explore.top_k > base.top_k
    adaptive = regime_sampling(Regime.ADAPTIVE, 1.0 * LN_2, 1.0 * LN_2**2, base)  # 2 bits of uncertainty
    assert adaptive.temperature == pytest.approx(0.666 * 1.6)
    assert adaptive.min_p == pytest.approx(0.01)  # 0.03 x (1 - 0.5 x 2) = 0, clamped to entropix's floor
    assert regime_sampling(Regime.ARGMAX, 0.0, 0.0, base).greedy


def test_draw_keeps_the_most_likely_candidate() -> None:
    logits = torch.log(torch.tensor([0.55, 0.45, 0.0, 0.0]))
    sampling = Sampling(temperature=1.0, top_p=1.0)
    assert all(draw(logits, sampling, make_generator(seed), candidates=40) == 0 for seed in range(5))
    assert {draw(logits, sampling, make_generator(seed)) for seed in range(40)} == {0, 1}
    # min-p really filters: token 1 is below 0.9 x p(token 0)
    assert {draw(logits, Sampling(min_p=0.9), make_generator(seed)) for seed in range(40)} == {0}


def test_same_seed_same_output(make_context: Any) -> None:
    runs = [DECODER.run(make_context(max_tokens=16, seed=seed), EntropyDecodingParams()) for seed in (7, 7, 8, 9)]
    assert runs[0].text == runs[1].text and runs[0].info == runs[1].info
    assert len({r.text for r in runs}) > 1


def test_emitted_pieces_make_up_the_text(make_context: Any) -> None:
    pieces: list[str] = []
    result = DECODER.run(make_context(max_tokens=20, emit=pieces.append), EntropyDecodingParams())
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert DECODER.streams


def test_respects_max_tokens(make_context: Any) -> None:
    result = DECODER.run(make_context(max_tokens=9), EntropyDecodingParams(**ALWAYS_PAUSE))
    assert result.completion_tokens == 9 and result.finish_reason == "length"
    assert sum(result.info["regimes"].values()) <= 9  # inserted pause tokens are not decisions
    default = DECODER.run(make_context(max_tokens=None), EntropyDecodingParams(max_tokens=4))
    assert default.completion_tokens == 4


def test_cancel_stops_decoding(make_context: Any) -> None:
    pieces: list[str] = []
    ctx = make_context(max_tokens=50, emit=pieces.append)
    ctx.emit = lambda piece: (pieces.append(piece), ctx.cancel.set())
    result = DECODER.run(ctx, EntropyDecodingParams())
    assert 1 <= result.completion_tokens < 10
    assert "".join(pieces) == result.text


def test_flat_distributions_insert_the_pause_text(tiny_lm: Any, make_context: Any) -> None:
    pause = tiny_lm.tokenizer(PAUSE_TEXT, add_special_tokens=False)["input_ids"]
    cycle = len(pause) + 1  # the pause, then (just paused) one hotter draw, then a pause again
    result = DECODER.run(make_context(max_tokens=3 * cycle), EntropyDecodingParams(**ALWAYS_PAUSE))
    assert result.completion_tokens == 3 * cycle and result.text.startswith(PAUSE_TEXT)
    assert result.info["pauses"] == 3
    assert result.info["regimes"]["pause"] == 6  # decisions: 3 pauses and 3 draws; pause tokens are not decisions


def test_low_uncertainty_everywhere_is_greedy_decoding(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=12)
    result = DECODER.run(ctx, EntropyDecodingParams(**ALWAYS_ARGMAX))
    assert result.text == _greedy(tiny_lm, ctx.prompt, 12)
    assert result.info["regimes"]["argmax"] == result.completion_tokens


def test_the_clients_temperature_wins(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=12, temperature=0.0, explicit=frozenset({"temperature"}))
    result = DECODER.run(ctx, EntropyDecodingParams())
    assert result.info["temperature"] == 0.0
    assert result.text == _greedy(tiny_lm, ctx.prompt, 12)
    default = DECODER.run(make_context(max_tokens=2, temperature=0.0), EntropyDecodingParams())
    assert default.info["temperature"] == pytest.approx(0.666)


def test_params() -> None:
    defaults = EntropyDecodingParams()
    assert (defaults.top_k, defaults.min_p, defaults.top_p, defaults.max_tokens) == (27, 0.03, 0.9, 4096)
    with pytest.raises(ValidationError):
        EntropyDecodingParams(top_k=0)
    with pytest.raises(ValidationError):
        EntropyDecodingParams(min_p=1.5)
    assert EntropyDecodingParams.model_validate({"top_k": 5, "decoding": "entropy_decoding"}).top_k == 5


def test_nulls_in_the_body_mean_the_defaults(make_context: Any) -> None:
    params = EntropyDecodingParams.model_validate({"temperature": None, "top_p": None, "max_tokens": None})
    result = DECODER.run(make_context(max_tokens=None), params.model_copy(update={"max_tokens": 3}))
    assert result.info["temperature"] == pytest.approx(0.666) and result.info["top_p"] == pytest.approx(0.9)
    assert result.completion_tokens == 3
