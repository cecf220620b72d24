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
import re
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.engine.context import RunContext
from optigraph.engine.state import ApproachState, Candidate, sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes.common import answer_of, branch_payload, helper_params, last_user_text, replace_last_user
from optigraph.nodes.extract import strip_think
from optigraph.nodes.sample import candidate_text
from optigraph.nodes.vote import vote_candidates

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

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "last": -1}
_NUM = r"(\d+|" + "|".join(_WORDS) + r")\b"
_NOUN = r"(?:candidate|response|solution|answer|option|choice)s?"
_VERB = r"(?:is|was|would\s+be|:|=|-)"
_FILL = r"[\s*_\[\]()#:.\-]*"  # markup between a label and its number
_PATTERNS = (
    # "BEST CANDIDATE: 2", "The best response is Candidate 2", "best candidate: **#2**"
    re.compile(r"\bbest(?:\s+(?:" + _NOUN + r"|one)\s*" + _VERB + r"?|\s*" + _VERB + r")" + _FILL
               + r"(?:" + _NOUN + r"|number|no\.)?" + _FILL + _NUM, re.IGNORECASE),
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]", re.IGNORECASE),
    # "Candidate 2 is the best", "Response 1 is better"
    re.compile(r"\b" + _NOUN + r"\s*#?\s*" + _NUM + r"[*_)\s]*(?:is|was)\s+(?:clearly\s+|the\s+|much\s+)*"
               r"(?:best|better|correct|strongest|stronger|superior|preferred|preferable|winner|most\s+accurate)",
               re.IGNORECASE),
    # "I choose Candidate 2", "I'd pick 3", "winner: Response 1"
    re.compile(r"\b(?:choose|chose|pick|picked|select|selected|prefer|go\s+with|winner\s*(?:is|:))\s+"
               r"(?:is\s+)?[*_]*(?:" + _NOUN + r")?" + _FILL + _NUM, re.IGNORECASE),
    re.compile(r"\*\*\s*(?:" + _NOUN + r")?\s*#?\s*" + _NUM + r"\s*\*\*", re.IGNORECASE),
)
_ORDINAL = re.compile(r"\bthe\s+(" + "|".join(_ORDINALS) + r")\s+(?:one|" + _NOUN + r")\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(?:" + _NOUN + r")?\s*#?\s*" + _NUM + r"\W*$", re.IGNORECASE)
_MENTION = re.compile(r"\b" + _NOUN + r"\s*#?\s*" + _NUM, re.IGNORECASE)


class PairOutcome(TypedDict):
    first: int  # candidate index shown as Response 1
    second: int  # candidate index shown as Response 2
    winner: int | None  # candidate index judged better; None: the judge failed or named neither
    raw: str


class PairwiseState(ApproachState, total=False):
    comparisons: Annotated[list[PairOutcome], operator.add]


def _number(token: str) -> int:
    token = token.lower()
    return _WORDS[token] if token in _WORDS else int(token)


def parse_choice(text: str, count: int) -> int | None:
    """The 0-based position of the candidate a reply picks among `count`, or None."""
    body = strip_think(text)

    def valid(numbers: Sequence[int]) -> list[int]:
        return [n for n in numbers if 1 <= n <= count]

    for pattern in _PATTERNS:
        found = valid([_number(m) for m in pattern.findall(body)])
        if found:
            return found[-1] - 1
    ordinals = valid([count if _ORDINALS[m.lower()] == -1 else _ORDINALS[m.lower()] for m in _ORDINAL.findall(body)])
    if ordinals:
        return ordinals[-1] - 1
    bare = _BARE.match(body)
    if bare and valid([_number(bare.group(1))]):
        return _number(bare.group(1)) - 1
    mentioned = set(valid([_number(m) for m in _MENTION.findall(body)]))
    return mentioned.pop() - 1 if len(mentioned) == 1 else None


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
        completion = await runtime.context.llm.chat(compare_messages(state["messages"], candidates), node="compare",
                                                    **_call_params(state))
    except UpstreamError as exc:
        note = f"compare: the comparison failed: {exc.message}"
    else:
        update["usage"] = completion.usage
        pos = parse_choice(completion.text, len(candidates))
        note = (f"compare: no candidate named in {completion.text[-160:]!r}" if pos is None
                else f"compare: picked candidate {pos + 1} of {len(candidates)}")
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
        completion = await runtime.context.llm.chat(pair_messages(state["messages"], first, second),
                                                    node="compare_pair", **_call_params(state))
    except UpstreamError as exc:
        outcome: PairOutcome = {"first": i, "second": j, "winner": None, "raw": ""}
        return {"comparisons": [outcome], "notes": [f"compare_pair: {i} vs {j} failed: {exc.message}"]}
    pick = parse_choice(completion.text, 2)
    winner = None if pick is None else (i, j)[pick]
    notes = [] if pick is not None else [f"compare_pair: no winner named for {i} vs {j} in {completion.text[-120:]!r}"]
    return {"comparisons": [{"first": i, "second": j, "winner": winner, "raw": completion.text}],
            "usage": completion.usage, "notes": notes}


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
