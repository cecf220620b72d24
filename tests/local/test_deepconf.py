"""deepconf: the confidence measures against hand computations, the threshold, early stopping, the
weighted vote, consensus, offline filtering, token accounting and batched warm-up on the tiny model."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from optigraph.local.decoding.deepconf import (
    DECODER,
    LOW_CONFIDENCE,
    DeepConfParams,
    Trace,
    group_confidences,
    percentile,
    run_online,
    sample_traces,
    stop_threshold,
    token_confidences,
    top_share,
    trace_confidence,
    trace_settings,
    vote_traces,
    voting,
    weighted_vote,
)

SMALL: dict[str, Any] = {
    "warmup_samples": 4,
    "max_traces": 12,
    "trace_batch_size": 4,
    "min_trace_length": 4,
    "window_size": 4,
}


def test_token_confidence_is_minus_the_mean_top_k_log_probability() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    got = token_confidences(logits, 5).tolist()
    for row, value in enumerate(got):
        logp = torch.log_softmax(logits[row].double(), dim=-1).tolist()
        top = sorted(logp, reverse=True)[:5]
        assert value == pytest.approx(-sum(top) / 5, rel=1e-5)
    peaked = torch.tensor([[20.0] + [0.0] * 9])
    flat = torch.zeros(1, 10)
    assert token_confidences(peaked, 5)[0] > token_confidences(flat, 5)[0]  # sure -> confident
    assert token_confidences(flat, 50)[0] == pytest.approx(torch.log(torch.tensor(10.0)))  # k capped at the vocab


def test_group_confidence_is_a_sliding_window_mean() -> None:
    conf = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert group_confidences(conf, 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert group_confidences(conf, 2, start=2) == [2.5, 3.5, 4.5]
    assert group_confidences(conf, 10, start=0) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert group_confidences(conf, 3, start=99) == [4.0]  # past the end: the last position
    assert group_confidences([], 3) == []


def test_trace_confidence_metrics() -> None:
    conf = [5.0, 1.0, 3.0, 3.0, 9.0, 1.0]
    assert trace_confidence(conf, "average_confidence", 2) == pytest.approx(22 / 6)
    assert trace_confidence(conf, "tail", 2) == pytest.approx(5.0)
    # full windows of 2: 3, 2, 3, 6, 5
    assert trace_confidence(conf, "lowest_group", 2) == pytest.approx(2.0)
    assert trace_confidence(conf, "bottom_10_percent", 2) == pytest.approx(2.0)  # ceil(10% of 5) = 1 group
    long = [float(i % 7) for i in range(40)]
    groups = sorted(group_confidences(long, 3, start=2))
    assert trace_confidence(long, "bottom_10_percent", 3) == pytest.approx(sum(groups[:4]) / 4)  # 38 groups -> 4
    assert trace_confidence([2.0, 4.0], "lowest_group", 8) == pytest.approx(3.0)  # shorter than a window
    assert trace_confidence([], "average_confidence", 8) == 0.0


def test_percentile_interpolates_like_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    np = pytest.importorskip("numpy")
    for q in (0, 10, 25, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)


def test_stop_threshold_keeps_the_top_share_of_warmup_traces() -> None:
    warmup = [[float(v)] * 6 for v in range(1, 11)] + [[]]  # lowest groups 1..10; the empty trace is ignored
    assert stop_threshold(warmup, "low", window=2, min_length=3) == pytest.approx(9.1)  # 90th percentile
    assert stop_threshold(warmup, "high", window=2, min_length=3) == pytest.approx(1.9)  # 10th percentile
    dip = [[5.0, 5.0, 0.0, 5.0, 5.0, 5.0]]  # the dip at token 3 counts from min_length 3 on, not before
    assert stop_threshold(dip, "low", window=2, min_length=3) == pytest.approx(2.5)
    assert stop_threshold(dip, "low", window=2, min_length=5) == pytest.approx(5.0)
    assert stop_threshold([[]], "low", window=2, min_length=3) is None


def test_weighted_vote_lets_confidence_outweigh_count() -> None:
    vote = weighted_vote(["4", "5", "5"], ["a 4", "b 5", "c 5"], [10.0, 1.0, 1.5])
    assert vote.key == "4" and vote.winner == 0 and vote.share == pytest.approx(10 / 12.5)
    vote = weighted_vote(["4", "5", "5", "4"], ["x", "y", "z", "w"], [1.0, 2.0, 2.0, 5.0])
    assert vote.key == "4" and vote.winner == 3  # the most confident trace of the winning answer
    vote = weighted_vote([None, None, "7"], ["the sky is blue", "the sky is blue!", "7"], [2.0, 2.0, 3.0])
    assert not vote.extracted and vote.winner in (0, 1)  # similar free texts vote together


def test_top_share_keeps_the_most_confident() -> None:
    scores = [3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.5, 2.5]
    assert top_share(scores, "low") == [1, 6]  # ceil(10% of 11) = 2
    assert top_share(scores, "high") == [i for i in range(11) if i != 9]  # ceil(90% of 11) = 10: all but the lowest
    assert top_share([1.0], "low") == [0]


def test_params_validation_and_metric_aliases() -> None:
    assert DeepConfParams(confidence_metric="lowest_group_confidence").confidence_metric == "lowest_group"
    assert DeepConfParams(confidence_metric="tail_confidence").confidence_metric == "tail"
    assert DeepConfParams.model_validate({"top_k": 40, "messages": []}).confidence_top_k == 5  # not OptILLM's top_k
    for bad in (
        {"confidence_metric": "median"},
        {"variant": "medium"},
        {"consensus_threshold": 0},
        {"warmup_samples": 0},
        {"temperature": 3},
    ):
        with pytest.raises(ValidationError):
            DeepConfParams(**bad)


def test_traces_are_stopped_once_group_confidence_falls_below_the_threshold(make_context: Any) -> None:
    ctx = make_context(max_tokens=16)
    settings = trace_settings(ctx, DeepConfParams(**SMALL))
    stopped = sample_traces(ctx, 3, settings, threshold=1e9)  # nothing is that confident
    assert all(t.finish_reason == LOW_CONFIDENCE and len(t.tokens) == 4 for t in stopped)
    kept = sample_traces(ctx, 3, settings, threshold=-1.0)
    assert all(t.finish_reason in ("stop", "length") for t in kept)
    assert any(len(t.tokens) > 4 for t in kept)


def test_online_run_stops_unconfident_traces_and_they_do_not_vote(make_context: Any) -> None:
    ctx = make_context(max_tokens=16, seed=0)
    params = DeepConfParams(**SMALL)
    traces, details = run_online(ctx, params, trace_settings(ctx, params))
    threshold = details["threshold"]
    assert len(traces) == 12 and sum(t.warmup for t in traces) == 4
    early = [t for t in traces if t.finish_reason == LOW_CONFIDENCE]
    assert early and not any(t.votes for t in early)
    for trace in traces[4:]:
        groups = group_confidences(trace.confidences, 4, start=3)
        if trace.finish_reason == LOW_CONFIDENCE:
            assert groups[-1] < threshold and all(g >= threshold for g in groups[:-1])
        else:
            assert all(g >= threshold for g in groups)
    warmup_lowest = sorted(min(group_confidences(t.confidences, 4, start=3)) for t in traces[:4])
    assert threshold == pytest.approx(percentile(warmup_lowest, 90))


def test_result_is_the_best_full_trace_and_accounts_every_token(make_context: Any) -> None:
    result = DECODER.run(make_context(max_tokens=16, seed=0), DeepConfParams(**SMALL, include_stats=True))
    stats = result.info["trace_stats"]
    assert len(stats) == result.info["traces"] == 12
    assert result.completion_tokens == sum(s["tokens"] for s in stats)
    assert result.info["early_stopped"] == sum(s["finish_reason"] == LOW_CONFIDENCE for s in stats)
    assert result.info["voting_traces"] == len(stats) - result.info["early_stopped"]
    assert result.prompt_tokens == len(make_context().prompt) * (result.info["batches"] - 1)
    assert max(s["tokens"] for s in stats) <= 16  # the client's max_tokens bounds every trace
    assert 0 < result.info["vote_share"] <= 1 and result.text


def test_consensus_stops_after_the_warmup(make_context: Any) -> None:
    result = DECODER.run(make_context(max_tokens=8), DeepConfParams(**SMALL, temperature=0.0))
    assert result.info["stopped_by"] == "consensus" and result.info["traces"] == 4  # identical greedy traces
    assert result.info["vote_share"] == pytest.approx(1.0)
    unanimous_needed = DECODER.run(
        make_context(max_tokens=8), DeepConfParams(**{**SMALL, "min_trace_length": 100}, consensus_threshold=1.0)
    )
    assert unanimous_needed.info["traces"] == 12 and unanimous_needed.info["stopped_by"] == "max_traces"


def test_offline_mode_filters_to_the_top_share(make_context: Any) -> None:
    low = DECODER.run(
        make_context(max_tokens=8, seed=1),
        DeepConfParams(**{**SMALL, "max_traces": 8}, mode="offline", include_stats=True),
    )
    stats = low.info["trace_stats"]
    assert low.info["traces"] == 8 and low.info["voting_traces"] == 1 and low.info["early_stopped"] == 0
    best = max(stats, key=lambda s: s["confidence"])
    assert [s for s in stats if s["finish_reason"] != "filtered"] == [best]
    assert low.info["threshold"] == pytest.approx(best["confidence"])
    high = DECODER.run(
        make_context(max_tokens=8, seed=1), DeepConfParams(**{**SMALL, "max_traces": 8}, mode="offline", variant="high")
    )
    assert high.info["voting_traces"] == 8  # ceil(90% of 8)


def test_warmup_traces_are_decoded_in_one_batch(tiny_lm: Any, make_context: Any) -> None:
    calls: list[int] = []
    handle = tiny_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        result = DECODER.run(
            make_context(max_tokens=10), DeepConfParams(**{**SMALL, "warmup_samples": 6, "max_traces": 6})
        )
    finally:
        handle.remove()
    assert result.info["traces"] == 6
    assert len(calls) <= 1 + 10  # one prefill, then at most one step per token: not 6 x 10
    assert calls[0] == 1 and max(calls) == 6  # the prompt once, then the six rows together


def test_vote_traces_only_counts_what_it_is_given() -> None:
    traces = [
        Trace(tokens=[1], confidences=[1.0], text="so 4", finish_reason="stop", answer="4", score=1.0),
        Trace(tokens=[1], confidences=[9.0], text="so 5", finish_reason=LOW_CONFIDENCE, answer="5", score=9.0),
    ]
    vote = vote_traces([t for t in traces if t.votes])
    assert vote is not None and vote.key == "4" and vote.share == 1.0
    assert vote_traces([]) is None
    assert dataclasses.replace(traces[0], finish_reason="cancelled").votes is False


def test_traces_cut_at_the_token_limit_vote_only_when_none_finished() -> None:
    finished = Trace(tokens=[1], confidences=[1.0], text="so 4", finish_reason="stop", answer="4", score=1.0)
    cut = [
        Trace(tokens=[1], confidences=[5.0], text="so far 5", finish_reason="length", answer="5", score=5.0)
        for _ in range(2)
    ]
    assert voting([*cut, finished]) == [finished]
    assert vote_traces(voting([*cut, finished])).key == "4"  # two confident cut traces would outvote it
    assert voting(cut) == cut


def test_every_parameter_is_described() -> None:
    assert all(field.description for field in DeepConfParams.model_fields.values())
