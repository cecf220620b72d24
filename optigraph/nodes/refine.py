"""refine: an LLM rewrites ONE text from feedback, as a `Send` branch (one task per text).

Two kinds of rewrite, as in Self-Refine (Madaan et al., arXiv 2303.17651) and the verify-then-fix
loops built on it:
- `solution`: a candidate answer rewritten from its verification issues or a critique. It is an
  answer the client may receive, so it is generated with the client's parameters (temperature
  overridable per branch), tools and response format included.
- `query`: the user's question rewritten to steer solvers around the mistakes the feedback found
  (the query refinement between prover-verifier rounds); an internal call, answered inside
  `<query>` tags.

A failed call or an empty rewrite adds no `Refined` entry, only a note: the caller keeps the text
it had, so one failed branch never costs the run its survivors.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypedDict

from langgraph.runtime import Runtime
from langgraph.types import Send

from optigraph.core.answers import strip_think, tag_content
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.state import ApproachState, candidate_text
from optigraph.errors import UpstreamError
from optigraph.nodes.common import (
    branch_payload,
    candidates_from,
    generation_params,
    helper_params,
)
from optigraph.nodes.sample import is_usable

SOLUTION_PROMPT = """Original query: {query}

A response to the query:
{solution}

Feedback on this response:
{feedback}

Write an improved response to the original query: fix every real problem the feedback raises and \
keep what is already correct (if a point of the feedback is itself mistaken, keep the correct \
reasoning). Reply with the complete improved response only, addressed to the original query, \
without mentioning the feedback."""

QUERY_PROMPT = """Here is a question:
{query}

Attempted answers to it were reviewed, and the reviewer found these problems:
{feedback}

Rewrite the question so that whoever answers it avoids those mistakes: keep every fact, number and \
requirement, do not change what is asked, state implicit constraints explicitly and point out the \
traps the attempts fell into. Do not answer the question or hint at its answer. Reply with the \
rewritten question only, inside <query></query> tags."""

NO_FEEDBACK = "No specific problems were reported; re-check every step and correct any error."

DEFAULT_TEMPERATURE = 0.5
DEFAULT_QUERY_MAX_TOKENS = 1024

Kind = Literal["solution", "query"]


class Refined(TypedDict, total=False):
    id: int  # the text it rewrites (the branch's id)
    round: int  # which refinement round of the graph it belongs to
    kind: str  # solution | query
    text: str
    message: dict[str, Any]  # the full assistant message (tool calls included) for a solution
    finish_reason: str | None


class RefineState(ApproachState, total=False):
    refined: Annotated[list[Refined], operator.add]


def refine_messages(messages: list[dict[str, Any]], kind: Kind, text: str, feedback: str) -> list[dict[str, Any]]:
    """The conversation with its last user turn replaced by the rewrite request."""
    feedback = feedback.strip() or NO_FEEDBACK
    if kind == "query":
        prompt = QUERY_PROMPT.format(query=text, feedback=feedback)
    else:
        prompt = SOLUTION_PROMPT.format(query=last_user_text(messages), solution=text, feedback=feedback)
    return replace_last_user(messages, prompt)


def refine_sends(
    state: ApproachState,
    jobs: Sequence[dict[str, Any]],
    *,
    node: str = "refine",
    messages: list[dict[str, Any]] | None = None,
) -> list[Send]:
    """Fan-out: one `node` branch per job (`{"id", "text", "feedback", "round", "kind"?,
    "temperature"?}`), carrying what it needs."""
    return [Send(node, branch_payload(state, {"node": node, **job}, messages=messages)) for job in jobs]


async def refine(state: RefineState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Rewrites `state["branch"]["text"]` from its `feedback`; writes one Refined (and usage), or
    only a note when the call failed or came back empty. Temperature: the branch's, else
    `params["refine_temperature"]`, else 0.5 for a query and the client's for a solution."""
    branch = state["branch"]
    ident: int = branch["id"]
    kind: Kind = branch.get("kind", "solution")
    node = branch.get("node", "refine")
    params = state.get("params") or {}
    temperature = branch.get("temperature")
    if temperature is None:
        temperature = params.get("refine_temperature")
    messages = refine_messages(state["messages"], kind, branch["text"], branch.get("feedback") or "")
    if kind == "query":
        call = helper_params(
            state,
            temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
            max_tokens=params.get("refine_max_tokens", DEFAULT_QUERY_MAX_TOKENS),
            reasoning_effort=(state.get("request") or {}).get("reasoning_effort"),
        )
    else:
        call = generation_params(state, temperature=temperature)
    try:
        completion = await runtime.context.llm.chat(messages, node=node, **call)
    except UpstreamError as exc:
        return {"notes": [f"{node}: rewriting {kind} {ident} failed, keeping it: {exc.message}"]}
    candidate = (candidates_from(completion) or [{"text": "", "message": {"role": "assistant", "content": ""}}])[0]
    if kind == "query":
        raw = strip_think(candidate.get("text") or "")
        text = tag_content(raw, "query") or raw
        usable = bool(text.strip())
    else:
        text, usable = candidate_text(candidate), is_usable(candidate)
    if not usable:
        note = f"{node}: the rewrite of {kind} {ident} came back empty, keeping it"
        return {"usage": completion.usage, "notes": [note]}
    refined: Refined = {
        "id": ident,
        "round": branch.get("round", 0),
        "kind": kind,
        "text": text.strip() if kind == "query" else candidate.get("text") or "",
        "message": candidate.get("message") or {"role": "assistant", "content": text},
        "finish_reason": candidate.get("finish_reason"),
    }
    return {"refined": [refined], "usage": completion.usage}
