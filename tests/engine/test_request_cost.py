"""What the passthrough path does once instead of per request: pooled run ids and remembered default
parameters (engine/request_params.py), checked for the same answers as the uncached path."""

from __future__ import annotations

import dataclasses
import re

import pytest
from pydantic import Field

from optigraph.core.ids import POOL_BYTES, RunIds
from optigraph.core.spec import ApproachParams
from optigraph.engine.registry import builtin_registry
from optigraph.engine.request_params import optillm_keys, resolve_params
from optigraph.errors import InvalidRequest


def test_run_ids_are_distinct_hex_across_pool_refills() -> None:
    ids = RunIds()
    made = [ids.new() for _ in range(3 * POOL_BYTES // 10 + 5)]  # three refills and a part
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    assert RunIds().new() != RunIds().new()


def test_run_ids_sort_by_the_millisecond_they_were_made_in(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = RunIds()
    clock = iter([1_765_000_000_000_000_000 + k * 1_000_000 for k in (0, 0, 1, 2, 2000)])
    monkeypatch.setattr("optigraph.core.ids.time.time_ns", lambda: next(clock))
    made = [ids.new() for _ in range(5)]
    assert [i[:12] for i in made] == [f"{1_765_000_000_000 + k:012x}" for k in (0, 0, 1, 2, 2000)]
    assert sorted(made[2:]) == made[2:]  # the patched clock's later milliseconds sort later
    assert made[0] != made[1]  # the same millisecond: told apart by the random part


def test_memoised_defaults_equal_fresh_validation() -> None:
    registry = builtin_registry()
    memo: dict = {}
    names = ("self_consistency", "none")
    first = resolve_params(registry, names, requested={}, body={}, defaults={}, memo=memo)
    again = resolve_params(registry, names, requested={}, body={}, defaults={}, memo=memo)
    fresh = resolve_params(registry, names, requested={}, body={}, defaults={})
    assert first == again == fresh
    assert set(memo) == set(names)
    again["self_consistency"]["samples"] = 99  # a run's copy: changing it changes no other run's
    assert resolve_params(registry, names, requested={}, body={}, defaults={}, memo=memo) == fresh


def test_given_parameters_bypass_the_memo_and_are_still_checked() -> None:
    registry = builtin_registry()
    memo: dict = {}
    resolve_params(registry, ("self_consistency",), requested={}, body={}, defaults={}, memo=memo)
    got = resolve_params(
        registry, ("self_consistency",), requested={"self_consistency": {"samples": 3}}, body={}, defaults={}, memo=memo
    )
    assert got["self_consistency"]["samples"] == 3
    with pytest.raises(InvalidRequest):
        resolve_params(
            registry,
            ("self_consistency",),
            requested={"self_consistency": {"samples": -1}},
            body={},
            defaults={},
            memo=memo,
        )
    defaults = {"self_consistency": {"samples": 7}}
    got = resolve_params(registry, ("self_consistency",), requested={}, body={}, defaults=defaults, memo=memo)
    assert got["self_consistency"]["samples"] == 7


def test_an_approach_registered_again_is_validated_anew() -> None:
    registry = builtin_registry()
    memo: dict = {}
    spec = registry.approach("re2")
    assert resolve_params(registry, ("re2",), requested={}, body={}, defaults={}, memo=memo)["re2"] == {}

    class Wider(ApproachParams):
        depth: int = Field(4)

    registry.specs["re2"] = dataclasses.replace(spec, params=Wider)  # as a server replacing an authored approach
    assert resolve_params(registry, ("re2",), requested={}, body={}, defaults={}, memo=memo)["re2"] == {"depth": 4}


def test_mutable_defaults_are_not_shared() -> None:
    registry = builtin_registry()
    spec = registry.approach("re2")

    class Listed(ApproachParams):
        stages: list[str] = Field(default_factory=lambda: ["a"])

    registry.add(dataclasses.replace(spec, name="listed", params=Listed))
    memo: dict = {}
    first = resolve_params(registry, ("listed",), requested={}, body={}, defaults={}, memo=memo)
    first["listed"]["stages"].append("b")
    got = resolve_params(registry, ("listed",), requested={}, body={}, defaults={}, memo=memo)
    assert got["listed"] == {"stages": ["a"]}
    assert "listed" not in memo


def test_optillm_key_prefilter_keeps_every_field_and_prefix() -> None:
    body = {"model": "m", "messages": [], "k": 3, "mcts_depth": 2, "rstar_x": 1, "cepo_y": 1, "comparison_mode": "x"}
    assert optillm_keys(body) == ["k", "mcts_depth", "rstar_x", "cepo_y", "comparison_mode"]


PLAIN = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BODIES = [
    PLAIN,
    {**PLAIN, "max_tokens": 16, "temperature": 0.7, "top_p": 1, "n": 2, "stream": False, "seed": 3, "user": "u"},
    {**PLAIN, "stop": ["a", "b"], "logprobs": True, "top_logprobs": 5, "presence_penalty": -2, "frequency_penalty": 2},
    {**PLAIN, "messages": [{"role": "system", "content": None}, {"role": "tool", "content": "x", "tool_call_id": "1"}]},
    {**PLAIN, "temperature": None, "stop": None},
    # each of these fails the schema or a server limit
    {"messages": PLAIN["messages"]},
    {"model": "", "messages": PLAIN["messages"]},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "m", "messages": [{"content": "hi"}]},
    {"model": "m", "messages": ["hi"]},
    {**PLAIN, "temperature": 2.5},
    {**PLAIN, "temperature": True},
    {**PLAIN, "temperature": "0.5"},
    {**PLAIN, "top_p": -0.1},
    {**PLAIN, "n": 0},
    {**PLAIN, "n": 99},
    {**PLAIN, "n": 2.0},
    {**PLAIN, "max_tokens": 0},
    {**PLAIN, "max_tokens": 10**9},
    {**PLAIN, "max_completion_tokens": 10**9},
    {**PLAIN, "stop": ["a", "b", "c", "d", "e"]},
    {**PLAIN, "stop": [1]},
    {**PLAIN, "stream": "yes"},
    {**PLAIN, "stream": 1},
    {**PLAIN, "top_logprobs": 3},
    {**PLAIN, "top_logprobs": 21, "logprobs": True},
    {**PLAIN, "user": 5},
    {**PLAIN, "seed": True},
    {**PLAIN, "presence_penalty": float("nan")},
    # fields outside the plain set: the schema decides
    {**PLAIN, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {**PLAIN, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {**PLAIN, "tools": [{"type": "function"}], "stream_options": {"include_usage": True}},
    {**PLAIN, "optigraph": {"max_upstream_calls": 0}},
    {**PLAIN, "custom_field": {"kept": True}},
]


def _outcome(body: dict, *, schema_only: bool) -> tuple[str, str | None] | None:
    from optigraph.engine import request

    plain = request._plainly_valid
    if schema_only:
        request._plainly_valid = lambda body: False  # type: ignore[assignment]
    try:
        request.check_request(body, max_n=16, max_tokens=100_000)
    except InvalidRequest as exc:
        return exc.message, exc.param
    finally:
        request._plainly_valid = plain
    return None


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_the_plain_check_accepts_and_refuses_exactly_as_the_schema(body: dict) -> None:
    from optigraph.engine.request import ChatCompletionRequest, _plainly_valid

    assert _outcome(body, schema_only=False) == _outcome(body, schema_only=True)
    if _plainly_valid(body):  # what the quick check passes, the schema passes
        ChatCompletionRequest.model_validate(body)


def test_the_plain_check_serves_the_common_requests() -> None:
    from optigraph.engine.request import _plainly_valid

    assert _plainly_valid(BODIES[0]) and _plainly_valid(BODIES[1]) and _plainly_valid(BODIES[3])
    assert not _plainly_valid(BODIES[-5]) and not _plainly_valid(BODIES[-1])
