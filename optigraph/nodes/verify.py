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
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.core.answers import strip_think
from optigraph.core.context import RunContext
from optigraph.core.judgments import parse_issues, parse_labelled_score, parse_verdict
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import ApproachState, candidate_text, sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes.common import branch_payload, helper_params

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

# "partially correct", "mostly right": not a pass.


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
        failed: Verification = {
            "id": ident,
            "round": round_,
            "verdict": None,
            "score": None,
            "issues": [],
            "report": "",
        }
        return {"verifications": [failed], "notes": [f"{node}: checking candidate {ident} failed: {exc.message}"]}
    report = strip_think(completion.text)
    verdict = parse_verdict(report)
    result: Verification = {
        "id": ident,
        "round": round_,
        "verdict": verdict,
        "score": parse_labelled_score(report),
        "issues": parse_issues(report),
        "report": report,
    }
    notes = [] if verdict is not None else [f"{node}: no verdict found for candidate {ident} in {report[:120]!r}"]
    return {"verifications": [result], "usage": completion.usage, "notes": notes}
