"""The typed state every approach graph shares, and its reducers.

An approach graph reads `messages`, `request`, `params` and `stream_choice`, and writes `answers`
(one per choice it produces; a single approach produces one). `usage` and `candidates` are summed
and appended by reducers, so parallel branches (LangGraph `Send`) can write them concurrently.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from optigraph.core.usage import Usage, add_usage


class Answer(TypedDict, total=False):
    """One final choice: an assistant message and why generation stopped."""

    message: dict[str, Any]
    finish_reason: str
    logprobs: dict[str, Any] | None


class Candidate(TypedDict, total=False):
    """One sampled response inside an approach. `index` orders candidates from parallel branches."""

    index: int
    text: str
    message: dict[str, Any]
    finish_reason: str | None


class Score(TypedDict, total=False):
    index: int  # the candidate it scores
    score: float | None  # None: the rating failed or could not be parsed
    raw: str  # what the model said


class ApproachState(TypedDict, total=False):
    # inputs
    messages: list[dict[str, Any]]  # the conversation, OpenAI format, approach tags removed
    request: dict[str, Any]  # the client's generation parameters (temperature, max_tokens, stop, tools...)
    params: dict[str, Any]  # this approach's validated parameters
    stream_choice: int | None  # choice index to stream the final LLM stage to, if streaming
    # working state
    candidates: Annotated[list[Candidate], operator.add]
    scores: Annotated[list[Score], operator.add]
    notes: Annotated[list[str], operator.add]  # intermediate texts (critiques, reflections)
    # outputs
    answers: list[Answer]
    usage: Annotated[Usage, add_usage]
    # Send payload for fan-out nodes (one branch's own fields)
    branch: dict[str, Any]


class PluginState(TypedDict, total=False):
    """What a plugin's `pre` and `post` stages read (see core/spec.py PluginSpec).

    `params` are the plugin's own validated parameters and `private` its own private state (what
    `pre` returned; checkpointed with the run, so a resumed run's `post` still has it). `post` also
    reads `answers`, the wrapped part's answers, and returns them rewritten."""

    messages: list[dict[str, Any]]  # the conversation (after `pre`, for `post`)
    request: dict[str, Any]
    params: dict[str, Any]
    private: dict[str, Any]
    answers: list[Answer]
    stream_choice: int | None


class Decision(TypedDict):
    """A choice made while the run ran: which expression a plugin's `pre` routed to, and why."""

    node: str
    plugin: str
    route: str
    reason: str


def sorted_candidates(state: ApproachState) -> list[Candidate]:
    """Candidates in index order (parallel branches append in completion order)."""
    return sorted(state.get("candidates") or [], key=lambda c: c.get("index", 0))


def candidate_text(candidate: Candidate) -> str:
    """The candidate's text, with any tool calls it makes written out (for prompts that show it)."""
    text = candidate.get("text") or ""
    calls = (candidate.get("message") or {}).get("tool_calls") or ()
    rendered = [
        f"[tool call] {c.get('function', {}).get('name', '')}({c.get('function', {}).get('arguments', '')})"
        for c in calls
        if isinstance(c, dict)
    ]
    return "\n".join([text, *rendered]).strip() if rendered else text
