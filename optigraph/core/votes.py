"""Majority vote over candidates' extracted answers, as self-consistency prescribes (Wang et al.,
arXiv 2203.11171): responses that reason differently but reach the same answer count together.

Responses with no extractable answer (free text) fall back to grouping by text similarity. Ties
between groups go to the group whose first member came first.

Responses that call tools vote on what they call: the function names and their JSON arguments in a
canonical form (keys sorted, whitespace and integral floats normalised), so two models asking for
`get_weather({"city": "Paris"})` agree however they spell the JSON. The winner's whole message,
tool calls included, is the answer.

A response cut at `max_tokens` (`finish_reason: "length"`) has not answered: whatever number it
last wrote is unfinished work. Such responses do not vote while any other response does; only when
every response was cut do they vote among themselves (better some answer than none).

Adaptive sampling (`should_stop`, `StopRule`) decides after each round whether more samples could
still change the vote. Its default rule, `lead`, stops once the leading answer is `min_lead` votes
ahead after at least `min_samples` samples, or once the samples left in the budget could not
overturn it (then the full budget would have given the same winner). `beta` is the rule of
adaptive consistency ("Let's Sample Step by Step", Aggarwal et al., arXiv 2305.11860): stop once
a Beta posterior is `threshold` sure that the leading answer beats the runner-up; at 0.95 it needs
four unanimous samples, which on a weak, noisy model is nearly the whole budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

from optigraph.core.answers import extract_normalized, strip_think
from optigraph.core.state import Candidate, candidate_text

SIMILARITY_THRESHOLD = 0.8
TOOL_CALL_KEY = "tool call: "  # prefix of a tool-call vote key (normalised answers are lowercase text)


@dataclass(frozen=True)
class Group:
    key: str  # the normalised answer, or the first member's text for a free-text group
    members: tuple[int, ...]  # positions in the voted sequence, in order
    extracted: bool  # whether the key is an extracted answer (not free text)


@dataclass(frozen=True)
class VoteResult:
    winner: int  # position of the winning group's first member
    groups: tuple[Group, ...]  # every group, in order of first appearance
    excluded: tuple[int, ...] = ()  # positions that did not vote (cut at max_tokens)

    @property
    def top(self) -> Group:
        return next(g for g in self.groups if g.members[0] == self.winner)


def _similar(a: str, b: str, threshold: float) -> bool:
    if a == b:
        return True
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return (
        matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold
    )


def group_answers(
    answers: Sequence[str | None], texts: Sequence[str], *, threshold: float = SIMILARITY_THRESHOLD
) -> list[Group]:
    """Groups positions by equal extracted answer; free-text ones (answer None) join the first
    free-text group whose first member's text is at least `threshold` similar."""
    keys: list[str] = []
    members: list[list[int]] = []
    extracted: list[bool] = []
    for i, answer in enumerate(answers):
        if answer is not None:
            key, is_answer = answer, True
        else:
            key, is_answer = " ".join(strip_think(texts[i]).lower().split()), False
        for g, existing in enumerate(keys):
            if extracted[g] != is_answer:
                continue
            if existing == key or (not is_answer and _similar(existing, key, threshold)):
                members[g].append(i)
                break
        else:
            keys.append(key)
            members.append([i])
            extracted.append(is_answer)
    return [Group(k, tuple(m), e) for k, m, e in zip(keys, members, extracted)]


def majority(
    answers: Sequence[str | None],
    texts: Sequence[str],
    *,
    threshold: float = SIMILARITY_THRESHOLD,
    cut: Sequence[bool] | None = None,
) -> VoteResult:
    """The largest group; on ties, the group whose first member came first. Positions marked in
    `cut` (responses cut at max_tokens) vote only when every position is cut."""
    if not texts:
        raise ValueError("nothing to vote on")
    voting = [i for i in range(len(texts)) if not (cut and cut[i])] or list(range(len(texts)))
    grouped = group_answers([answers[i] for i in voting], [texts[i] for i in voting], threshold=threshold)
    groups = [Group(g.key, tuple(voting[m] for m in g.members), g.extracted) for g in grouped]
    best = max(groups, key=lambda g: (len(g.members), -g.members[0]))
    excluded = tuple(i for i in range(len(texts)) if i not in set(voting))
    return VoteResult(winner=best.members[0], groups=tuple(groups), excluded=excluded)


def is_cut(candidate: Candidate) -> bool:
    """Whether generation stopped at max_tokens (its answer, if any, is unfinished work)."""
    return candidate.get("finish_reason") == "length"


def vote_texts(texts: Sequence[str], *, threshold: float = SIMILARITY_THRESHOLD) -> VoteResult:
    """Extracts an answer from each text, then `majority`."""
    return majority([extract_normalized(t) for t in texts], texts, threshold=threshold)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def canonical_arguments(arguments: Any) -> str:
    """Tool-call arguments as canonical JSON; text that is not JSON is kept, trimmed."""
    if arguments is None or arguments == "":
        return "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments.strip()
    return json.dumps(_canonical(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tool_call_key(message: dict[str, Any]) -> str | None:
    """The vote key of a message's tool calls (order-independent), or None when it calls none."""
    calls = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or call.get(call.get("type") or "") or {}
        name = fn.get("name") or call.get("type") or ""
        calls.append(f"{name}({canonical_arguments(fn.get('arguments', fn.get('input')))})")
    return TOOL_CALL_KEY + "; ".join(sorted(calls)) if calls else None


def answer_key(candidate: Candidate) -> str | None:
    """What a candidate votes for: its tool calls, else its extracted answer, else None (free text)."""
    return tool_call_key(candidate.get("message") or {}) or extract_normalized(candidate.get("text") or "")


def vote_candidates(candidates: Sequence[Candidate], *, threshold: float = SIMILARITY_THRESHOLD) -> VoteResult:
    """`majority` over the candidates' answer keys (tool calls or extracted answers); candidates cut at
    max_tokens vote only when all were cut."""
    return majority(
        [answer_key(c) for c in candidates],
        [candidate_text(c) for c in candidates],
        threshold=threshold,
        cut=[is_cut(c) for c in candidates],
    )


def leader_probability(leader: int, runner_up: int) -> float:
    """P(p_leader > p_runner_up) when the two shares follow Beta(leader + 1, runner_up + 1): the
    chance that more samples would not overturn the current leader. Exact for integer counts:
    P(X > 1/2) for X ~ Beta(a, b) is P(Binomial(a + b - 1, 1/2) <= a - 1)."""
    trials = leader + runner_up + 1
    return sum(math.comb(trials, j) for j in range(leader + 1)) / 2**trials


def vote_margin(result: VoteResult) -> tuple[int, int]:
    """Sizes of the largest and second-largest groups (0 when there is only one)."""
    sizes = sorted((len(g.members) for g in result.groups), reverse=True)
    return sizes[0], sizes[1] if len(sizes) > 1 else 0


def vote_summary(result: VoteResult) -> str:
    summary = ", ".join(f"{g.key[:40]!r} x{len(g.members)}" for g in result.groups)
    if result.excluded:
        summary += f"; {len(result.excluded)} cut at max_tokens not counted"
    return summary


StopKind = Literal["lead", "beta"]


@dataclass(frozen=True)
class StopRule:
    """When adaptive sampling has enough samples (see the module docstring)."""

    kind: StopKind = "lead"
    min_samples: int = 2  # `lead`: samples drawn before a lead can stop sampling
    min_lead: int = 2  # `lead`: votes the leader must be ahead of the runner-up
    threshold: float = 0.95  # `beta`: P(leader stays ahead) that stops sampling

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> StopRule:
        """The rule an approach's validated parameters (`AdaptiveParams` fields) describe."""
        return cls(
            kind=params.get("stop_rule", "lead"),
            min_samples=int(params.get("min_samples", 2)),
            min_lead=int(params.get("min_lead", 2)),
            threshold=float(params.get("stop_threshold", 0.95)),
        )


def should_stop(leader: int, runner_up: int, drawn: int, budget: int, rule: StopRule) -> bool:
    """Whether to stop sampling with the two largest groups of these sizes, `drawn` samples drawn of
    at most `budget`. Always true once the budget is spent or the samples left could not overturn
    the leader (so stopping then never changes the winner the full budget would give)."""
    if drawn >= budget or leader - runner_up > budget - drawn:
        return True
    if rule.kind == "beta":
        return leader_probability(leader, runner_up) >= rule.threshold
    return drawn >= rule.min_samples and leader - runner_up >= rule.min_lead
