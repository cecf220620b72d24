"""Majority vote over candidates' extracted answers, as self-consistency prescribes (Wang et al.,
arXiv 2203.11171): responses that reason differently but reach the same answer count together.

Responses with no extractable answer (free text) fall back to grouping by text similarity. Ties
between groups go to the group whose first member came first.

Responses that call tools vote on what they call: the function names and their JSON arguments in a
canonical form (keys sorted, whitespace and integral floats normalised), so two models asking for
`get_weather({"city": "Paris"})` agree however they spell the JSON. The winner's whole message,
tool calls included, is the answer.

`leader_probability` is the stopping rule of adaptive consistency ("Let's Sample Step by Step",
Aggarwal et al., arXiv 2305.11860): how sure a Beta posterior is that the leading answer beats the
runner-up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

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
    answers: Sequence[str | None], texts: Sequence[str], *, threshold: float = SIMILARITY_THRESHOLD
) -> VoteResult:
    """The largest group; on ties, the group whose first member came first."""
    if not texts:
        raise ValueError("nothing to vote on")
    groups = group_answers(answers, texts, threshold=threshold)
    best = max(groups, key=lambda g: (len(g.members), -g.members[0]))
    return VoteResult(winner=best.members[0], groups=tuple(groups))


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
    """`majority` over the candidates' answer keys (tool calls or extracted answers)."""
    return majority([answer_key(c) for c in candidates], [candidate_text(c) for c in candidates], threshold=threshold)


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
    return ", ".join(f"{g.key[:40]!r} x{len(g.members)}" for g in result.groups)
