"""`rto`: round-trip optimization. "Unsupervised Evaluation of Code LLMs with Round-Trip
Correctness" (Allamanis et al., 2024, arXiv 2402.08699) checks an answer by describing it back into a
task and regenerating from that description alone; "Patched RTC" (Sharma et al., 2024,
arXiv 2407.16557) turns the round trip into an inference-time technique. Where the first answer and
the regenerated one agree, the task was understood the same way twice; where they differ, one of
them went wrong, and the model reconciles them.

1) answer the conversation; 2) in the same conversation, describe that answer as a self-contained
task from which it could be reproduced (without the answer itself); 3) answer the description alone
in a fresh conversation (the client's system prompt kept); 4) compare without an LLM: for code, the
fenced code blocks, whitespace and comment lines aside; otherwise the extracted final answers; 5) if
they agree the first answer is returned as it is, else one call compares the two against the
original query and writes the final answer, streamed to the client. The answer keeps its
explanation (not bare code), and a non-code question is served too: the round trip then checks its
final result.

Robustness: when the first answer fails the run fails; when it is empty or a tool call, the round
trip has nothing to describe and it is returned as it is; a failed description or regeneration, or a
reconciliation that fails before streaming anything, also returns the first answer (noted).

Graph: START -> answer -> describe -> regenerate -> compare -> reconcile | keep_first -> END.
Cost: 4 calls in 4 dependent rounds (3 when the two answers agree).
"""

from __future__ import annotations

import re
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.answers import code_blocks, extract_normalized, strip_think
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState, candidate_text
from optigraph.errors import UpstreamError
from optigraph.nodes.common import (
    answer_of,
    candidates_from,
    generation_params,
    helper_params,
)
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import is_usable, param_or_client

DESCRIBE_PROMPT = """Write a self-contained task description from which someone who has not seen \
your previous response could produce it again. If it is code, state precisely what the code must \
do: its inputs and outputs, function names and signatures, behaviour on edge cases, and any \
constraints on the approach. Otherwise state the question and every requirement the response \
meets. Do not include the response itself, its code or its final answer. Reply with the task \
description only."""

RECONCILE_PROMPT = """Original query: {query}

Response A:
{first}

Response B, written independently from a description of Response A:
{second}

The two responses disagree. Compare them against the original query: where they differ, work out \
which one is correct, and look for errors both share. Then write the best final response to the \
original query, keeping what is correct in either. If the query asks for code, give the complete \
final code in one fenced code block. Reply with that response only, addressed to the original \
query, without mentioning Response A or Response B."""

DEFAULT_TEMPERATURE = 0.1
DEFAULT_DESCRIBE_MAX_TOKENS = 1024

_COMMENT_LINE = re.compile(r"^(?:#(?:\s|$)|//|--\s)")


class RtoParams(ApproachParams):
    temperature: float | None = client_temperature(
        DEFAULT_TEMPERATURE, "Temperature of both answers and the reconciliation"
    )
    describe_max_tokens: int = Field(
        DEFAULT_DESCRIBE_MAX_TOKENS, ge=1, le=32768, description="Longest task description."
    )


class RtoState(ApproachState, total=False):
    first: dict[str, Any]  # the first answer, as a candidate
    description: str  # the first answer described back into a task
    second: dict[str, Any]  # the answer regenerated from the description alone
    agree: bool  # whether the two answers agree (code blocks, else final answers)


def normalize_code(code: str) -> str:
    """Code compared modulo whitespace, blank lines and whole-line comments."""
    lines = (re.sub(r"\s+", " ", line).strip() for line in code.splitlines())
    return "\n".join(line for line in lines if line and not _COMMENT_LINE.match(line))


def answers_agree(first: str, second: str) -> tuple[bool, str]:
    """Whether two responses agree, and on what it was judged: their code when the first has code,
    else their extracted final answers, else their whole normalised texts."""
    first_code = [code for _, code in code_blocks(first)]
    second_code = [code for _, code in code_blocks(second)]
    if first_code:
        same = bool(second_code) and normalize_code("\n".join(first_code)) == normalize_code("\n".join(second_code))
        return same, "code"
    a, b = extract_normalized(first), extract_normalized(second)
    if a is not None and b is not None:
        return a == b, "final answer"
    return " ".join(strip_think(first).split()).lower() == " ".join(strip_think(second).split()).lower(), "text"


def _call(state: ApproachState) -> dict[str, Any]:
    return generation_params(state, temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE))


async def answer(state: RtoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    completion = await runtime.context.llm.chat(state["messages"], node="answer", **_call(state))
    return {"first": candidates_from(completion)[0], "usage": completion.usage}


def route_first(state: RtoState) -> str:
    first = state["first"]
    if not (first.get("text") or "").strip() or (first.get("message") or {}).get("tool_calls"):
        return "keep_first"
    return "describe"


async def describe(state: RtoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or {}
    messages = [
        *state["messages"],
        {"role": "assistant", "content": candidate_text(state["first"])},
        {"role": "user", "content": DESCRIBE_PROMPT},
    ]
    call = helper_params(
        state,
        temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("describe_max_tokens", DEFAULT_DESCRIBE_MAX_TOKENS),
    )
    try:
        completion = await runtime.context.llm.chat(messages, node="describe", **call)
    except UpstreamError as exc:
        return {"description": "", "notes": [f"describe: failed, returning the first answer: {exc.message}"]}
    description = strip_think(completion.text)
    notes = [] if description else ["describe: the description came back empty, returning the first answer"]
    return {"description": description, "usage": completion.usage, "notes": notes}


def route_description(state: RtoState) -> str:
    return "regenerate" if (state.get("description") or "").strip() else "keep_first"


async def regenerate(state: RtoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Answers the description alone: the client's system prompt, no history, no first answer."""
    system = [m for m in state["messages"] if m.get("role") in ("system", "developer")]
    messages = [*system, {"role": "user", "content": state["description"]}]
    try:
        completion = await runtime.context.llm.chat(messages, node="regenerate", **_call(state))
    except UpstreamError as exc:
        return {"notes": [f"regenerate: failed, returning the first answer: {exc.message}"]}
    return {"second": candidates_from(completion)[0], "usage": completion.usage}


async def compare(state: RtoState) -> dict[str, Any]:
    """Whether the round trip came back to the same answer (no LLM)."""
    second = state.get("second")
    if second is None or not is_usable(second):
        note = "compare: no regenerated answer" + ("" if second is None else " (empty)") + ", returning the first"
        return {"agree": True, "notes": [note]}
    same, basis = answers_agree(candidate_text(state["first"]), candidate_text(second))
    return {"agree": same, "notes": [f"compare: the two answers {'agree' if same else 'differ'} ({basis})"]}


def route_comparison(state: RtoState) -> str:
    return "keep_first" if state.get("agree") else "reconcile"


async def reconcile(state: RtoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Compares the two answers against the query and writes the final one (streamed)."""
    prompt = RECONCILE_PROMPT.format(
        query=last_user_text(state["messages"]),
        first=candidate_text(state["first"]),
        second=candidate_text(state["second"]),
    )
    try:
        completion = await generate_final(
            state, runtime, replace_last_user(state["messages"], prompt), node="reconcile", **_call(state)
        )
    except UpstreamError as exc:
        sink, choice = runtime.context.sink, state.get("stream_choice")
        if sink is not None and choice in sink.streamed:
            raise  # part of the answer already reached the client
        return {
            "answers": [answer_of(state["first"])],
            "notes": [f"reconcile: failed, returning the first answer: {exc.message}"],
        }
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


async def keep_first(state: RtoState) -> dict[str, Any]:
    return {"answers": [answer_of(state["first"])]}


def build() -> StateGraph:
    graph = StateGraph(RtoState, context_schema=RunContext)
    graph.add_node("answer", answer)
    graph.add_node("describe", describe)
    graph.add_node("regenerate", regenerate)
    graph.add_node("compare", compare)
    graph.add_node("reconcile", reconcile)
    graph.add_node("keep_first", keep_first)
    graph.add_edge(START, "answer")
    graph.add_conditional_edges("answer", route_first, ["describe", "keep_first"])
    graph.add_conditional_edges("describe", route_description, ["regenerate", "keep_first"])
    graph.add_edge("regenerate", "compare")
    graph.add_conditional_edges("compare", route_comparison, ["reconcile", "keep_first"])
    graph.add_edge("reconcile", END)
    graph.add_edge("keep_first", END)
    return graph


SPEC = ApproachSpec(
    name="rto",
    description="Round-trip optimization: answer, describe it back into a task, regenerate, compare, reconcile.",
    build=build,
    params=RtoParams,
    papers=("arXiv:2402.08699", "arXiv:2407.16557"),
    calls="4",
    rounds="4",
    streams_final=True,
)
