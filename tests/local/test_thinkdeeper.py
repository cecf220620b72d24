"""thinkdeeper on the tiny model: early ends become switch phrases, the budget forces the end marker,
the KV cache stays true to the kept sequence after a cut, streaming, seeds and cancellation."""

from __future__ import annotations

import copy
import dataclasses
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from optigraph.local.decoding.thinkdeeper import (
    DECODER,
    ThinkDeeperParams,
    ThinkingPlan,
    ThinkingRun,
    count_new,
    effort_profile,
    make_plan,
    thinking_prompt,
)
from optigraph.local.text import decode

MARKER = "</think>"
HEAD = "<think>\n"

# rule(last input token, its position) -> {token: logit bonus} for the next token
Rule = Callable[[int, int], dict[int, float]]


def biased(lm: Any, rule: Rule) -> Any:
    """A copy of the loaded model whose next-token logits get `rule`'s bonuses (a scripted tendency)."""
    model = copy.deepcopy(lm.model)
    seen: dict[str, Any] = {}

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        positions = kwargs.get("position_ids")
        seen["last"] = ids[:, -1].tolist()
        seen["pos"] = positions[:, -1].tolist() if positions is not None else [ids.shape[1] - 1] * ids.shape[0]

    def after(module: Any, args: Any, output: Any) -> Any:
        bonus = torch.zeros_like(output)
        for row, (last, pos) in enumerate(zip(seen["last"], seen["pos"])):
            for token, value in rule(last, pos).items():
                bonus[row, -1, token] += value
        return output + bonus

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.lm_head.register_forward_hook(after)
    return dataclasses.replace(lm, model=model)


def ids(lm: Any, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def context_on(make_context: Any, lm: Any, **options: Any) -> Any:
    return dataclasses.replace(make_context(**options), lm=lm)


def plan(max_tokens: int, low: int, high: int, thoughts: int = 64, **options: Any) -> ThinkingPlan:
    return ThinkingPlan(
        max_tokens=max_tokens, min_thinking_tokens=low, max_thinking_tokens=high, max_thoughts=thoughts, **options
    )


def run_plan(ctx: Any, the_plan: ThinkingPlan) -> tuple[ThinkingRun, Any]:
    prompt = thinking_prompt(ctx, the_plan.start_think, the_plan.prefill)
    thinking = ThinkingRun(ctx, the_plan, prompt)
    return thinking, thinking.run()


def tokens_before(thinking: ThinkingRun, offset: int) -> int:
    """Tokens whose text ends by `offset` of the response text."""
    return bisect_right(thinking.ends, offset)


def assert_greedy_consistent(lm: Any, thinking: ThinkingRun) -> None:
    """Every sampled (not forced) token is the argmax of a fresh forward pass over the kept sequence: the
    KV cache held exactly the kept tokens at every step, cuts included."""
    for i, token in enumerate(thinking.tokens):
        if thinking.was_forced[i]:
            continue
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([thinking.prompt + thinking.tokens[:i]])).logits[0, -1]
        assert int(logits.argmax()) == token, f"token {i} differs from a fresh forward pass"


def test_effort_profile() -> None:
    assert effort_profile("low", 1000) == (100, 330, 64)
    assert effort_profile("medium", 1000) == (100, 660, 256)
    assert effort_profile("high", 1000) == (100, 900, 512)
    assert effort_profile("minimal", 1000) == effort_profile("low", 1000)


def test_explicit_budget_wins_and_is_bounded() -> None:
    params = ThinkDeeperParams(min_thinking_tokens=50, max_thinking_tokens=5000, max_thoughts=3)
    resolved = make_plan(params, 1000, *effort_profile("high", 1000))
    assert (resolved.min_thinking_tokens, resolved.max_thinking_tokens, resolved.max_thoughts) == (50, 1000, 3)
    resolved = make_plan(ThinkDeeperParams(min_thinking_tokens=400, max_thinking_tokens=300), 1000, 100, 330, 64)
    assert (resolved.min_thinking_tokens, resolved.max_thinking_tokens) == (300, 300)


def test_params_read_the_openai_reasoning_effort_field() -> None:
    params = ThinkDeeperParams.model_validate({"reasoning_effort": "high", "model": "x", "messages": []})
    assert params.reasoning_effort == "high"
    assert ThinkDeeperParams().thought_switch_tokens == ("Wait,", "Alternatively,", "However,", "Additionally,")
    assert ThinkDeeperParams(thought_switch_tokens=["Hmm,"]).thought_switch_tokens == ("Hmm,",)  # JSON lists
    with pytest.raises(ValidationError):
        ThinkDeeperParams(reasoning_effort="extreme")
    with pytest.raises(ValidationError):
        ThinkDeeperParams(thought_switch_tokens=[])
    with pytest.raises(ValidationError):
        ThinkDeeperParams(min_thinking_tokens=-1)


def test_count_new_counts_only_phrases_ending_after_the_scanned_text() -> None:
    text = "<think>\nWait, so. However, x Wait,"
    assert count_new(text, ["Wait,", "However,"], since=8, floor=8) == 3
    assert count_new(text, ["Wait,", "However,"], since=len(text) - 2, floor=8) == 1  # the last one completes now
    assert count_new(text, ["Wait,"], since=len(text), floor=8) == 0
    assert count_new("Wait, Wait,", ["Wait,"], since=0, floor=6) == 1  # before `floor` (the head) never counts


def test_end_of_sequence_before_the_minimum_becomes_a_switch_phrase(tiny_lm: Any, make_context: Any) -> None:
    eos = min(tiny_lm.eos_ids)
    lm = biased(tiny_lm, lambda last, pos: {eos: 100.0})  # the model always wants to stop
    thinking, outcome = run_plan(context_on(make_context, lm, seed=1), plan(60, 12, 40))
    head_end = len(HEAD)
    marker_at = outcome.text.index(MARKER)
    assert tokens_before(thinking, marker_at) >= 12  # thinking was not allowed to end before the minimum
    assert outcome.text.count(MARKER) == 1
    assert outcome.thoughts_forced >= 3 and outcome.end == "eos" and outcome.finish_reason == "stop"
    thinking_text = outcome.text[head_end:marker_at]
    leftover = thinking_text
    for phrase in ThinkingPlan.switch_phrases:
        leftover = leftover.replace(phrase, "")
    assert leftover.strip() == ""  # only switch phrases: the model itself only ever tried to stop
    assert all(thinking.was_forced) and eos not in thinking.tokens


def test_early_end_marker_is_cut_out_and_the_cache_rebuilt(tiny_lm: Any, make_context: Any) -> None:
    marker = ids(tiny_lm, MARKER)
    assert len(marker) > 1  # the multi-token case: its first tokens reach the cache before it is recognised
    ctx = make_context(temperature=0.0)
    start = len(thinking_prompt(ctx, "<think>", ""))

    def rule(last: int, pos: int) -> dict[int, float]:
        if last in marker[:-1]:
            return {marker[marker.index(last) + 1]: 100.0}
        return {marker[0]: 100.0} if pos == start + 2 else {}  # the marker once, 3 tokens into the thinking

    lm = biased(tiny_lm, rule)
    pieces: list[str] = []
    thinking, outcome = run_plan(context_on(make_context, lm, temperature=0.0, emit=pieces.append), plan(40, 20, 30))
    assert outcome.rewinds == 1 and outcome.thoughts_forced == 1
    assert tokens_before(thinking, outcome.text.index(MARKER)) >= 20
    assert outcome.prompt_tokens > len(thinking.prompt)  # the kept sequence was run again
    # text and tokens agree after the cut (the random model's broken UTF-8 aside)
    assert outcome.text.replace("\ufffd", "") == (HEAD + decode(tiny_lm.tokenizer, thinking.tokens)).replace(
        "\ufffd", ""
    )
    assert "".join(pieces) == outcome.text  # the cut marker was held back, never streamed
    assert_greedy_consistent(lm, thinking)


def test_a_single_token_marker_is_dropped_without_rerunning(tiny_lm: Any, make_context: Any) -> None:
    marker = "think"  # one token in the tiny tokenizer
    token = ids(tiny_lm, marker)
    assert len(token) == 1
    ctx = make_context(temperature=0.0)
    start = len(thinking_prompt(ctx, "<think>", ""))
    lm = biased(tiny_lm, lambda last, pos: {token[0]: 100.0} if pos == start - 1 else {})  # the first token
    thinking, outcome = run_plan(context_on(make_context, lm, temperature=0.0), plan(30, 16, 24, end_think=marker))
    assert outcome.rewinds == 1 and thinking.tokens[0] != token[0]
    assert outcome.prompt_tokens == len(thinking.prompt)  # never re-run: the marker never reached the cache
    assert tokens_before(thinking, outcome.text.index(marker, len(HEAD))) >= 16
    assert_greedy_consistent(lm, thinking)


def test_max_thinking_tokens_forces_the_end_marker(tiny_lm: Any, make_context: Any) -> None:
    thinking, outcome = run_plan(make_context(temperature=0.0), plan(30, 2, 10))
    assert outcome.end == "budget"
    forced_end = ids(tiny_lm, "\n" + MARKER + "\n")
    assert thinking.tokens[10 : 10 + len(forced_end)] == forced_end
    assert all(thinking.was_forced[10 : 10 + len(forced_end)]) and not any(thinking.was_forced[:10])
    assert outcome.thinking_tokens == 10 + len(forced_end) - 1  # the marker ends one token before the newline
    assert outcome.completion_tokens == 30 and outcome.finish_reason == "length"
    assert_greedy_consistent(tiny_lm, thinking)


def test_max_thoughts_forces_the_end_marker(tiny_lm: Any, make_context: Any) -> None:
    eos = min(tiny_lm.eos_ids)
    lm = biased(tiny_lm, lambda last, pos: {eos: 100.0})
    _, outcome = run_plan(context_on(make_context, lm), plan(60, 40, 50, thoughts=2))
    assert outcome.thoughts_forced == 2 and outcome.thoughts == 2 and outcome.end == "thoughts"
    assert outcome.text.count(MARKER) == 1 and outcome.finish_reason == "stop"


def test_same_seed_same_output(make_context: Any) -> None:
    params = ThinkDeeperParams(min_thinking_tokens=4, max_thinking_tokens=12)
    first = DECODER.run(make_context(seed=7, max_tokens=24), params)
    again = DECODER.run(make_context(seed=7, max_tokens=24), params)
    other = DECODER.run(make_context(seed=8, max_tokens=24), params)
    assert first.text == again.text and first.info == again.info
    assert first.text != other.text


def test_streamed_text_is_the_result_text(make_context: Any) -> None:
    pieces: list[str] = []
    result = DECODER.run(
        make_context(seed=2, max_tokens=30, emit=pieces.append),
        ThinkDeeperParams(min_thinking_tokens=5, max_thinking_tokens=15),
    )
    assert len(pieces) > 3 and "".join(pieces) == result.text
    assert result.text.startswith(HEAD) and MARKER in result.text
    assert result.completion_tokens == 30 and result.finish_reason == "length"
    assert result.info["max_thinking_tokens"] == 15 and result.info["reasoning_effort"] == "low"


def test_effort_sets_the_budget_from_max_tokens(make_context: Any) -> None:
    result = DECODER.run(make_context(max_tokens=40), ThinkDeeperParams(reasoning_effort="medium"))
    assert (result.info["min_thinking_tokens"], result.info["max_thinking_tokens"]) == (4, 26)
    assert result.info["max_thoughts"] == 256


def test_cancel_stops_generation(make_context: Any) -> None:
    pieces: list[str] = []
    ctx = make_context(seed=0, max_tokens=200)

    def emit(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 3:
            ctx.cancel.set()

    ctx.emit = emit
    result = DECODER.run(ctx, ThinkDeeperParams(min_thinking_tokens=150, max_thinking_tokens=180))
    assert result.info["cancelled"] and result.finish_reason == "length"
    assert result.completion_tokens < 10
    assert "".join(pieces) == result.text


def test_every_parameter_is_described() -> None:
    assert all(field.description for field in ThinkDeeperParams.model_fields.values())
