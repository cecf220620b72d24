"""verify: an LLM judges whether ONE candidate is correct, as a `Send` branch (one task per check).

The verifier gets the conversation's earlier turns and, as the last user turn, the problem and the
candidate, and is asked to check it step by step and end with `Issues:`, `Score:` (0-10) and
`Verdict: CORRECT|INCORRECT` lines. It is a fresh request, not "your previous answer": asked to
judge its own turn, a model tends to defend it. The same check can be run several times on one
candidate (independent passes) by sending several branches with the same `id`.

Verdicts are read robustly, never by a substring test ("incorrect" contains "correct"): a labelled
verdict first (`**Verdict: CORRECT**`, `Verdict: not correct`), else the last sentence that judges
the solution ("The solution is not correct"), else a reply that is only a verdict word, else the
last upper-case verdict word. Qualified verdicts ("partially correct") are failures. A check whose
call failed or whose verdict cannot be read is recorded with verdict None and a note: never a pass.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.engine.context import RunContext
from optigraph.engine.state import ApproachState, sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes.common import branch_payload, helper_params, last_user_text, replace_last_user
from optigraph.nodes.extract import strip_think
from optigraph.nodes.rate import parse_rating
from optigraph.nodes.sample import candidate_text

VERIFY_PROMPT = """Check the proposed solution to the problem below for correctness.

Problem:
{query}

Proposed solution:
{solution}

Go through the solution step by step: check every calculation, every logical step, and whether \
it fully answers what the problem asks. Note every error, unjustified step or gap. Do not write a \
new solution.

End your reply with exactly these three lines:
Issues: <each problem you found, separated by semicolons, or "none">
Score: <0 to 10: how confident you are that the solution is correct and complete>
Verdict: <CORRECT or INCORRECT>"""

DEFAULT_TEMPERATURE = 0.1
DEFAULT_MAX_TOKENS = 1024


class Verification(TypedDict, total=False):
    id: int  # the candidate (or solution) it judges
    round: int  # which verification round of the graph it belongs to
    verdict: bool | None  # None: the call failed, or no verdict could be read
    score: float | None  # the verifier's 0-10 confidence, when it gave one
    issues: list[str]  # the problems it found
    report: str  # what it said, `<think>` blocks removed


class VerifyState(ApproachState, total=False):
    verifications: Annotated[list[Verification], operator.add]


# ---- parsing -------------------------------------------------------------------------------------

_PASS = frozenset({"correct", "pass", "passed", "passes", "valid", "true", "accept", "accepted", "accurate",
                   "right", "sound", "verified"})
_FAIL = frozenset({"incorrect", "fail", "failed", "fails", "invalid", "false", "reject", "rejected",
                   "inaccurate", "wrong", "unsound", "flawed", "incomplete", "erroneous", "unverified"})
_NEGATIONS = frozenset({"not", "never", "isn't", "isnt", "wasn't", "nor"})
# "partially correct", "mostly right": not a pass.
_QUALIFIERS = frozenset({"partially", "partly", "mostly", "almost", "largely", "nearly", "somewhat", "half"})

_LABEL = re.compile(r"\b(?:final\s+)?(?:verdict|assessment|judge?ment)\b[\s*_`#]*(?:is\b)?[\s*_`]*[:=\-–—]?(.*)",
                    re.IGNORECASE)
_JUDGING = re.compile(
    r"\b(?:solution|answer|proof|response|reasoning|derivation|it|this)\s+"
    r"(?:is|was|appears(?:\s+to\s+be)?|seems(?:\s+to\s+be)?|looks)(n't|\s+not)?\s+((?:[a-z]+\s+){0,2}?)"
    r"(correct|incorrect|right|wrong|valid|invalid|flawed|sound|unsound|accurate|inaccurate)\b",
    re.IGNORECASE,
)
_SHOUTED = re.compile(r"\b(CORRECT|INCORRECT|PASS|FAIL|VALID|INVALID)\b")
_SCORE_LINE = re.compile(r"^[^\n]*\b(?:score|confidence)\b[^\n]*$", re.IGNORECASE | re.MULTILINE)
_ISSUES = re.compile(r"^[\W_]*issues?(?:\s+found)?[\s*_`]*:(.*)", re.IGNORECASE | re.MULTILINE)
_SECTION_END = re.compile(r"^[\W_]*(?:score|confidence|verdict|final\s+verdict|assessment)\b",
                          re.IGNORECASE | re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_NONE = re.compile(r"^(?:none|no issues?(?: found)?|no problems?(?: found)?|no errors?(?: found)?|n/?a|nothing)\W*$",
                   re.IGNORECASE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def _judge_phrase(phrase: str, *, limit: int = 10) -> bool | None:
    """The verdict a short phrase states ("CORRECT", "not correct", "The solution is wrong")."""
    words = _words(phrase)[:limit]
    negated = qualified = False
    for word in words:
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
        elif word in _QUALIFIERS:
            qualified = True
        elif word in _PASS or word in _FAIL:
            if qualified:
                return False
            return (word in _PASS) != negated
    return None


def parse_verdict(text: str) -> bool | None:
    """True (pass), False (fail), or None when the reply states no readable verdict."""
    body = strip_think(text)
    if not body:
        return None
    for match in reversed(list(_LABEL.finditer(body))):
        phrase = match.group(1)
        found = {w for w in _words(phrase)[:10] if w in _PASS or w in _FAIL}
        if found & _PASS and found & _FAIL and " or " in phrase.lower():
            continue  # the template echoed back: "CORRECT or INCORRECT"
        verdict = _judge_phrase(phrase)
        if verdict is not None:
            return verdict
    judged = list(_JUDGING.finditer(body))
    if judged:
        m = judged[-1]
        negated = bool(m.group(1))
        qualifiers = set(_words(m.group(2) or ""))
        if qualifiers & _QUALIFIERS:
            return False
        negated ^= bool(qualifiers & _NEGATIONS)
        return (m.group(3).lower() in _PASS) != negated
    words = _words(body)
    if 0 < len(words) <= 3:
        verdict = _judge_phrase(body)
        if verdict is not None:
            return verdict
    shouted = _SHOUTED.findall(body)
    if shouted:
        return shouted[-1] in ("CORRECT", "PASS", "VALID")
    return None


def parse_score(text: str) -> float | None:
    """The 0-10 score of the last `Score:` (or `Confidence:`) line; None when there is none."""
    lines = _SCORE_LINE.findall(strip_think(text))
    for line in reversed(lines):
        value = parse_rating(line)
        if value is not None:
            return value
    return None


def parse_issues(text: str) -> list[str]:
    """The problems listed after the last `Issues:` label (bullets, lines or semicolons); [] for
    "none" or when there is no such section."""
    body = strip_think(text)
    found = list(_ISSUES.finditer(body))
    if not found:
        return []
    start = found[-1]
    rest = start.group(1) + body[start.end():]
    end = _SECTION_END.search(rest, len(start.group(1)))
    section = rest[: end.start()] if end else rest
    lines = [ln for ln in section.splitlines() if ln.strip()]
    items = lines if len(lines) > 1 else [p for ln in lines for p in ln.split(";")]
    issues = [_BULLET.sub("", item).strip().strip("*_`").strip() for item in items]
    return [i for i in issues if i and not _NONE.match(i)]


def feedback_of(verifications: Iterable[Verification]) -> str:
    """The failed checks' findings as feedback for a rewrite: their issues, else their reports."""
    parts: list[str] = []
    for v in verifications:
        if v.get("verdict") is not False:
            continue
        issues = v.get("issues") or []
        text = "\n".join(f"- {i}" for i in issues) if issues else (v.get("report") or "").strip()
        if text and text not in parts:
            parts.append(text)
    return "\n\n".join(parts)


# ---- the node ------------------------------------------------------------------------------------

def verify_messages(messages: list[dict[str, Any]], solution: str, query: str | None = None) -> list[dict[str, Any]]:
    """The conversation with its last user turn replaced by the verification request."""
    prompt = VERIFY_PROMPT.format(query=query if query is not None else last_user_text(messages), solution=solution)
    return replace_last_user(messages, prompt)


def verify_sends(
    state: ApproachState,
    jobs: Sequence[dict[str, Any]],
    *,
    node: str = "verify",
    messages: list[dict[str, Any]] | None = None,
) -> list[Send]:
    """Fan-out: one `node` branch per job (`{"id", "text", "round"}`), carrying what it needs."""
    return [Send(node, branch_payload(state, {"node": node, **job}, messages=messages)) for job in jobs]


def verify_each(state: ApproachState, *, node: str = "verify", passes: int = 1) -> list[Send]:
    """Fan-out over the state's candidates: `passes` checks of each, round 0."""
    jobs = [
        {"id": c.get("index", i), "text": candidate_text(c), "round": 0}
        for i, c in enumerate(sorted_candidates(state))
        for _ in range(passes)
    ]
    return verify_sends(state, jobs, node=node)


async def verify(state: VerifyState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Checks `state["branch"]["text"]`; writes one Verification (and usage, and a note when the
    call failed or no verdict could be read). Temperature and max_tokens: `params["verify_temperature"]`
    and `params["verify_max_tokens"]` (None: no cap); the client's `reasoning_effort` is kept."""
    branch = state["branch"]
    ident: int = branch["id"]
    round_: int = branch.get("round", 0)
    node = branch.get("node", "verify")
    params = state.get("params") or {}
    call = helper_params(
        state,
        temperature=params.get("verify_temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("verify_max_tokens", DEFAULT_MAX_TOKENS),
        reasoning_effort=(state.get("request") or {}).get("reasoning_effort"),
    )
    messages = verify_messages(state["messages"], branch["text"], branch.get("query"))
    try:
        completion = await runtime.context.llm.chat(messages, node=node, **call)
    except UpstreamError as exc:
        failed: Verification = {"id": ident, "round": round_, "verdict": None, "score": None, "issues": [],
                                "report": ""}
        return {"verifications": [failed], "notes": [f"{node}: checking candidate {ident} failed: {exc.message}"]}
    report = strip_think(completion.text)
    verdict = parse_verdict(report)
    result: Verification = {
        "id": ident,
        "round": round_,
        "verdict": verdict,
        "score": parse_score(report),
        "issues": parse_issues(report),
        "report": report,
    }
    notes = [] if verdict is not None else [f"{node}: no verdict found for candidate {ident} in {report[:120]!r}"]
    return {"verifications": [result], "usage": completion.usage, "notes": notes}
