"""cot_decoding on the tiny model: top-k branching, greedy paths, answer-token confidence, voting."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from optigraph.local.decoding.cot_decoding import (
    DECODER,
    CotDecodingParams,
    DecodedPath,
    answer_span,
    banned_tokens,
    choose_path,
    decode_paths,
    path_confidence,
    token_margins,
    token_offsets,
)


def _greedy(lm: Any, ids: list[int], new_tokens: int, **options: Any) -> list[int]:
    """transformers' own greedy continuation of `ids`, end-of-sequence dropped."""
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=sorted(lm.eos_ids),
            pad_token_id=lm.pad_id,
            **options,
        )
    generated = out[0, len(ids) :].tolist()
    return [t for t in generated if t not in lm.eos_ids]


def _next_logits(lm: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([ids])).logits[0].float()


def _path(answer: str | None, confidence: float, text: str = "") -> DecodedPath:
    return DecodedPath(
        first_token="",
        tokens=[1],
        text=text or f"so {answer}",
        answer=answer,
        confidence=confidence,
        finish_reason="stop",
    )


def test_paths_branch_on_the_k_most_likely_first_tokens(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=6)
    paths = decode_paths(ctx, CotDecodingParams(k=5))
    logits = _next_logits(tiny_lm, ctx.prompt)[-1]
    ranked = [t for t in torch.argsort(logits, descending=True).tolist() if t not in tiny_lm.eos_ids]
    assert [p.tokens[0] for p in paths] == ranked[:5]


def test_each_path_is_the_greedy_continuation_of_its_first_token(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=10)
    paths = decode_paths(ctx, CotDecodingParams(k=3))
    for path in paths:
        assert path.tokens[1:] == _greedy(tiny_lm, ctx.prompt + path.tokens[:1], 9)
        assert path.finish_reason == ("length" if len(path.tokens) == 10 else "stop")


def test_no_repeat_ngram_size_matches_transformers(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=10)
    paths = decode_paths(ctx, CotDecodingParams(k=2, no_repeat_ngram_size=2))
    plain = decode_paths(make_context(max_tokens=10), CotDecodingParams(k=2))
    assert [p.tokens for p in paths] != [p.tokens for p in plain]  # the ban changed something
    for path in paths:
        assert path.tokens[1:] == _greedy(tiny_lm, ctx.prompt + path.tokens[:1], 9, no_repeat_ngram_size=2)


def test_banned_tokens() -> None:
    assert banned_tokens([5, 6, 7, 5], 2) == [6]  # "5 6" seen: after 5, 6 would repeat it
    assert banned_tokens([5, 6, 5, 8, 5], 2) == [6, 8]
    assert banned_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert sorted(banned_tokens([4, 4, 9], 1)) == [4, 9]
    assert banned_tokens([1, 2], 0) == []


def test_confidence_is_the_mean_top2_margin_recomputed_from_a_forward_pass(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=10)
    paths = decode_paths(ctx, CotDecodingParams(k=6))
    path = next(p for p in paths if p.answer is None)  # no answer: every token counts
    logits = _next_logits(tiny_lm, ctx.prompt + path.tokens[:-1])[len(ctx.prompt) - 1 :]
    probs = torch.softmax(logits, dim=-1)
    top2 = torch.topk(probs, 2, dim=-1).values
    assert path.confidence == pytest.approx(float((top2[:, 0] - top2[:, 1]).mean()), abs=1e-5)


def test_confidence_counts_only_the_answer_tokens(tiny_lm: Any) -> None:
    text = "Two plus two is four. The answer is 4."
    encoded = tiny_lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens, offsets = encoded["input_ids"], encoded["offset_mapping"]
    decoded, spans = token_offsets(tiny_lm.tokenizer, tokens)
    assert decoded == text
    assert spans == [tuple(o) for o in offsets]
    answer, span = answer_span(decoded)
    assert answer == "4"
    assert span == (text.rindex("4"), text.rindex("4") + 1)
    margins = [0.1 + 0.01 * i for i in range(len(tokens))]
    covering = [m for m, (s, e) in zip(margins, offsets) if s < span[1] and e > span[0]]
    assert len(covering) == 1
    assert path_confidence(margins, spans, span) == pytest.approx(covering[0])
    assert path_confidence(margins, spans, None) == pytest.approx(sum(margins) / len(margins))


def test_answer_span_prefers_the_answer_as_a_whole_word() -> None:
    text = "The answer is 4. Checking: 14 - 10 = 4, not 41"
    answer, span = answer_span(text)
    assert answer == "4" and span is not None
    assert text[span[0] : span[1]] == "4" and text[span[0] - 2 : span[1] + 1] == "= 4,"
    assert answer_span("no commitment here") == (None, None)


def test_token_margins() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    assert token_margins(logits) == pytest.approx([0.2, 0.7], abs=1e-6)


def test_aggregation_sums_confidence_per_answer() -> None:
    unsure = _path(None, 0.1, "no idea")
    paths = [_path("7", 0.5), _path("4", 0.3), unsure, _path("4", 0.35), unsure]
    chosen, scores = choose_path(paths, aggregate=True)
    assert scores["4"] == pytest.approx(0.65) and scores["7"] == pytest.approx(0.5)
    assert scores["text:no idea"] == pytest.approx(0.2)  # identical texts without an answer still merge
    assert chosen == 3  # the more confident path of the winning answer
    assert choose_path(paths, aggregate=False) == (0, {})
    assert choose_path([_path("1", 0.2), _path("2", 0.2)], aggregate=True)[0] == 0  # ties: the likelier first token


def test_k1_is_greedy_decoding(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=15)
    result = DECODER.run(ctx, CotDecodingParams(k=1))
    expected = _greedy(tiny_lm, ctx.prompt, 15)
    assert result.text == tiny_lm.tokenizer.decode(expected, skip_special_tokens=True)
    assert result.completion_tokens == len(expected)
    assert result.info["chosen"] == 0 and len(result.info["paths"]) == 1


def test_result_reports_every_path_and_all_tokens(tiny_lm: Any, make_context: Any) -> None:
    ctx = make_context(max_tokens=9)
    params = CotDecodingParams(k=4, aggregate_paths=False)
    result = DECODER.run(ctx, params)
    paths = decode_paths(make_context(max_tokens=9), params)
    info = result.info
    assert [p["text"] for p in info["paths"]] == [p.text for p in paths]
    assert [p["tokens"] for p in info["paths"]] == [len(p.tokens) for p in paths]
    assert result.completion_tokens == sum(len(p.tokens) for p in paths)
    assert all(set(p) >= {"first_token", "text", "answer", "confidence"} for p in info["paths"])
    best = max(range(4), key=lambda i: paths[i].confidence)
    assert info["chosen"] == best
    assert result.text == paths[best].text and result.finish_reason == paths[best].finish_reason


def test_max_tokens_defaults_to_the_parameter_when_the_client_gives_none(make_context: Any) -> None:
    paths = decode_paths(make_context(max_tokens=None), CotDecodingParams(k=2, max_tokens=5))
    assert [len(p.tokens) for p in paths] == [5, 5]


def test_cancel_stops_before_continuing_the_paths(make_context: Any) -> None:
    ctx = make_context(max_tokens=30)
    ctx.cancel.set()
    result = DECODER.run(ctx, CotDecodingParams(k=3))
    assert result.completion_tokens == 3  # only the branching tokens


def test_params() -> None:
    defaults = CotDecodingParams()
    assert (defaults.k, defaults.num_beams, defaults.max_tokens, defaults.aggregate_paths) == (10, 1, 512, True)
    with pytest.raises(ValidationError):
        CotDecodingParams(k=0)
    with pytest.raises(ValidationError):
        CotDecodingParams(num_beams=2)
    parsed = CotDecodingParams.model_validate({"k": 3, "length_penalty": 2.0, "early_stopping": True, "decoding": "x"})
    assert parsed.k == 3
    assert DECODER.name == "cot_decoding" and DECODER.params is CotDecodingParams and not DECODER.streams
