"""compare: the model reads several candidates side by side and picks one.

Two forms. `compare` puts 2..k candidates in one prompt and asks for the best, as GenSelect does
("AIMO-2 Winning Solution", arXiv 2504.16891): comparing is easier for a model than scoring in
isolation. `compare_pair` judges one ordered pair; run over every ordered pair (`pairs_each`) and
tallied by `select_by_wins`, each unordered pair is judged in both orders, so a judge's bias for the
first (or second) position cancels out.

The choice is read loosely ("BEST CANDIDATE: 2", "Candidate 2", "**2**", "[[2]]", "the second
one"); a reply that names no candidate, or a failed call, gives None with a note, never silently the
first candidate. `compare` then falls back to a majority vote over the candidates' answers.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.core.answers import strip_think
from optigraph.core.context import RunContext
from optigraph.core.judgments import parse_choice
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import (
    ApproachState,
    Candidate,
    candidate_text,
    sorted_candidates,
)
from optigraph.core.votes import vote_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes.common import answer_of, branch_payload, helper_params

CANDIDATE_BLOCK = "Candidate {number}:\n{text}"

COMPARE_PROMPT = """Original query: {query}

Here are {count} candidate responses to the query:

{candidates}

Compare the candidates. Check each one's reasoning and final answer for errors, note where they \
disagree and work out which of them is right. Then choose the single best candidate: the one most \
likely to be correct, and complete.

Write your analysis first. End with one line of the form:
BEST CANDIDATE: <number from 1 to {count}>"""

PAIRWISE_PROMPT = """Original query: {query}

Response 1:
{first}

Response 2:
{second}

Which response answers the query better? Judge correctness first, then completeness and clarity. \
Explain briefly, then end with [[1]] if Response 1 is better or [[2]] if Response 2 is better."""

DEFAULT_TEMPERATURE = 0.3
DEFAULT_MAX_TOKENS = 2048


class PairOutcome(TypedDict):
    first: int  # candidate index shown as Response 1
    second: int  # candidate index shown as Response 2
    winner: int | None  # candidate index judged better; None: the judge failed or named neither
    raw: str


class PairwiseState(ApproachState, total=False):
    comparisons: Annotated[list[PairOutcome], operator.add]


def shown(candidate: Candidate) -> str:
    """A candidate as a judge sees it: without its `<think>` scratch work, tool calls written out."""
    return strip_think(candidate_text(candidate)) or candidate_text(candidate)


def compare_messages(messages: list[dict[str, Any]], candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    blocks = "\n\n".join(CANDIDATE_BLOCK.format(number=i + 1, text=shown(c)) for i, c in enumerate(candidates))
    prompt = COMPARE_PROMPT.format(query=last_user_text(messages), count=len(candidates), candidates=blocks)
    return replace_last_user(messages, prompt)


def pair_messages(messages: list[dict[str, Any]], first: Candidate, second: Candidate) -> list[dict[str, Any]]:
    prompt = PAIRWISE_PROMPT.format(query=last_user_text(messages), first=shown(first), second=shown(second))
    return replace_last_user(messages, prompt)


def _call_params(state: ApproachState) -> dict[str, Any]:
    params = state.get("params") or {}
    return helper_params(
        state,
        temperature=params.get("comparison_temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("comparison_max_tokens", DEFAULT_MAX_TOKENS),
    )


async def compare(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Picks the best of the candidates in one call; the pick becomes the answer. A lone candidate
    needs no call; an unreadable reply or a failed call falls back to a majority vote (noted)."""
    candidates = sorted_candidates(state)
    if not candidates:
        raise ValueError("no candidates to compare")
    if len(candidates) == 1:
        return {"answers": [answer_of(candidates[0])], "notes": ["compare: one candidate, nothing to compare"]}
    update: dict[str, Any] = {}
    pos: int | None = None
    try:
        completion = await runtime.context.llm.chat(
            compare_messages(state["messages"], candidates), node="compare", **_call_params(state)
        )
    except UpstreamError as exc:
        note = f"compare: the comparison failed: {exc.message}"
    else:
        update["usage"] = completion.usage
        pos = parse_choice(completion.text, len(candidates))
        note = (
            f"compare: no candidate named in {completion.text[-160:]!r}"
            if pos is None
            else f"compare: picked candidate {pos + 1} of {len(candidates)}"
        )
    notes = [note]
    if pos is None:
        pos = vote_candidates(candidates).winner
        notes.append(f"compare: fell back to a majority vote, candidate {pos + 1}")
    chosen = candidates[pos]
    score = {"index": chosen.get("index", pos), "score": 1.0, "raw": ""}
    return {**update, "answers": [answer_of(chosen)], "scores": [score], "notes": notes}


def pairs_each(state: ApproachState, *, node: str = "compare_pair", params: dict[str, Any] | None = None) -> list[Send]:
    """Fan-out: one `compare_pair` branch per ordered pair of candidates (k * (k - 1) branches).
    `params` replaces the branch's parameters (to map an approach's own names onto
    `comparison_temperature` and `comparison_max_tokens`)."""
    candidates = sorted_candidates(state)
    return [
        Send(node, branch_payload(state, {"first": a, "second": b}, params=params))
        for a in candidates
        for b in candidates
        if a is not b
    ]


async def compare_pair(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Judges `branch["first"]` against `branch["second"]`; writes one PairOutcome."""
    first: Candidate = state["branch"]["first"]
    second: Candidate = state["branch"]["second"]
    i, j = first.get("index", 0), second.get("index", 0)
    try:
        completion = await runtime.context.llm.chat(
            pair_messages(state["messages"], first, second), node="compare_pair", **_call_params(state)
        )
    except UpstreamError as exc:
        outcome: PairOutcome = {"first": i, "second": j, "winner": None, "raw": ""}
        return {"comparisons": [outcome], "notes": [f"compare_pair: {i} vs {j} failed: {exc.message}"]}
    pick = parse_choice(completion.text, 2)
    winner = None if pick is None else (i, j)[pick]
    notes = [] if pick is not None else [f"compare_pair: no winner named for {i} vs {j} in {completion.text[-120:]!r}"]
    return {
        "comparisons": [{"first": i, "second": j, "winner": winner, "raw": completion.text}],
        "usage": completion.usage,
        "notes": notes,
    }


def wins(candidates: Sequence[Candidate], outcomes: Sequence[PairOutcome]) -> list[int]:
    """Comparisons won by each candidate, in the order of `candidates`."""
    position = {c.get("index", p): p for p, c in enumerate(candidates)}
    tally = [0] * len(candidates)
    for o in outcomes:
        if o.get("winner") is not None and o["winner"] in position:
            tally[position[o["winner"]]] += 1
    return tally


async def select_by_wins(state: PairwiseState) -> dict[str, Any]:
    """The candidate that won the most pairwise comparisons is the answer (earliest on ties)."""
    candidates = sorted_candidates(state)
    if not candidates:
        raise ValueError("no candidates to select from")
    outcomes = state.get("comparisons") or []
    tally = wins(candidates, outcomes)
    pos = max(range(len(candidates)), key=lambda p: (tally[p], -p))
    undecided = sum(o.get("winner") is None for o in outcomes)
    listed = ", ".join(f"{c.get('index', p)}: {tally[p]}" for p, c in enumerate(candidates))
    note = f"select_by_wins: candidate {candidates[pos].get('index', pos)} (wins {listed}; {undecided} undecided)"
    scores = [{"index": c.get("index", p), "score": float(tally[p]), "raw": ""} for p, c in enumerate(candidates)]
    return {"answers": [answer_of(candidates[pos])], "scores": scores, "notes": [note]}
