"""Majority vote over candidates' extracted answers, as self-consistency prescribes (Wang et al.,
arXiv 2203.11171): responses that reason differently but reach the same answer count together.

Responses with no extractable answer (free text) fall back to grouping by text similarity. Ties
between groups go to the group whose first member came first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from optigraph.engine.state import ApproachState, sorted_candidates
from optigraph.nodes.common import answer_of
from optigraph.nodes.extract import extract_normalized, strip_think

SIMILARITY_THRESHOLD = 0.8


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
    return matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


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


async def vote(state: ApproachState) -> dict[str, Any]:
    """Votes over the candidates' extracted answers; the winning group's first full response is
    the answer. The threshold for free text is `params["similarity_threshold"]` (default 0.8)."""
    candidates = sorted_candidates(state)
    threshold = (state.get("params") or {}).get("similarity_threshold")
    threshold = SIMILARITY_THRESHOLD if threshold is None else float(threshold)
    texts = [c.get("text") or "" for c in candidates]
    result = vote_texts(texts, threshold=threshold)
    top = result.top
    summary = ", ".join(f"{g.key[:40]!r} x{len(g.members)}" for g in result.groups)
    return {
        "answers": [answer_of(candidates[result.winner])],
        "notes": [f"vote: {len(top.members)} of {len(candidates)} agree ({summary})"],
    }
