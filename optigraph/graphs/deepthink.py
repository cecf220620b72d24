"""`deepthink`: a reasoning structure composed for the task, then uncertainty-routed chain of thought.

1. SELF-DISCOVER ("Self-Discover: Large Language Models Self-Compose Reasoning Structures", Zhou
   et al., 2024, arXiv 2402.03620): from a list of general reasoning modules the model SELECTs the
   ones that fit the task, ADAPTs them to it, and IMPLEMENTs them as a step-by-step reasoning
   structure (three dependent calls, none of which solves the task).
2. Uncertainty-routed chain of thought (Gemini report, arXiv 2312.11805, section 5.1.1): k samples
   following the structure and one greedy (temperature 0) answer, concurrently. If the share of
   samples agreeing on the majority's extracted answer reaches `confidence_threshold`, a majority
   sample is returned; otherwise the model is unsure and the greedy answer is returned.

Any self-discover step that fails is noted and skipped (the run degrades to plain chain of thought
under whatever structure exists). Failed samples count as disagreement.

Graph: START -> select_modules -> adapt_modules -> implement_structure -> (sample | greedy) ->
decide -> END; with `enable_self_discover` false, START goes straight to sample and greedy.
Calls: 3 (self-discover) + 1 (k samples) + 1 (greedy); rounds: 3 + 1.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState, Candidate, sorted_candidates
from optigraph.core.votes import vote_candidates, vote_summary
from optigraph.errors import UpstreamError
from optigraph.nodes.common import (
    answer_of,
    candidates_from,
    generation_params,
    helper_params,
)
from optigraph.nodes.sample import param_or_client, sample_candidates
from optigraph.nodes.transform import with_system_instructions

# General-purpose reasoning modules, in the spirit of SELF-DISCOVER's seed list (our own wording).
REASONING_MODULES = (
    "Break the problem into smaller sub-problems and solve them one at a time.",
    "Think step by step, writing down each intermediate result.",
    "Identify exactly what is asked and what form the answer must take.",
    "List the given facts, quantities and constraints before reasoning.",
    "Identify the underlying principle, formula or concept the problem rests on.",
    "Work backwards from the goal to what is needed to reach it.",
    "Try a simpler or special case first, then generalise.",
    "Consider several possible approaches and pick the most promising one.",
    "Look for a similar problem whose solution method can be reused.",
    "Check the assumptions: which are stated, which are implied, which might be wrong.",
    "Reason about edge cases and exceptions.",
    "Use critical thinking: question each step, look for flaws and alternative readings.",
    "Estimate the answer roughly first, to sanity-check the exact result.",
    "Draw or describe a diagram, table or timeline of the situation.",
    "Track units, signs and magnitudes through every calculation.",
    "Enumerate the cases systematically and eliminate the impossible ones.",
    "Look at the problem from the perspective of each party or component involved.",
    "Identify cause and effect relationships and their order.",
    "Verify the final answer against every condition of the problem.",
    "Reflect on the reasoning and revise any step that does not hold up.",
)
DEFAULT_MODULES = (0, 1, 2, 18)  # used when the model's selection cannot be read

SELECT_PROMPT = """Task:
{task}

Reasoning modules:
{modules}

Select the reasoning modules that are most useful for solving this task: at least {low} and at most \
{limit}. Do not solve the task. Reply with a JSON list of the selected modules' numbers only, for \
example [2, 5, 9]."""

ADAPT_PROMPT = """Task:
{task}

Selected reasoning modules:
{selected}

Rephrase each selected module so that it speaks specifically to this task: what exactly to break \
down, check or compute here. Do not solve the task."""

IMPLEMENT_PROMPT = """Task:
{task}

Reasoning modules adapted to the task:
{adapted}

Turn these into a step-by-step reasoning structure for solving the task: a JSON object whose keys \
are the steps, in order, and whose values are empty strings for the solver to fill in. Do not \
solve the task. Reply with the JSON object only."""

SOLVE_INSTRUCTIONS = """Solve the task by following this reasoning structure, filling in every step:
{structure}

Think through the steps inside <think> and </think> tags. After the closing </think> tag, give \
your answer. If the task has a single final answer, end with a line "Final answer: <answer>"."""

SOLVE_INSTRUCTIONS_PLAIN = """Think through the task step by step inside <think> and </think> tags. \
After the closing </think> tag, give your answer. If the task has a single final answer, end with \
a line "Final answer: <answer>"."""

DISCOVER_TEMPERATURE = 0.3
DISCOVER_MAX_TOKENS = 1024
DEFAULT_TEMPERATURE = 0.7
MIN_MODULES = 3


class DeepThinkParams(ApproachParams):
    deepthink_samples: int = Field(3, ge=1, le=32, description="Chain-of-thought samples voted on.")
    confidence_threshold: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Share of samples agreeing needed to trust the majority over the greedy answer.",
    )
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling for the samples (not the greedy answer).")
    max_tokens: int | None = Field(None, ge=1, le=131072, description="Answer length cap; default: the client's.")
    enable_self_discover: bool = Field(True, description="Compose a reasoning structure first (3 calls).")
    reasoning_modules_limit: int = Field(
        7, ge=1, le=len(REASONING_MODULES), description="Most reasoning modules the model may select."
    )


class DeepThinkState(ApproachState, total=False):
    selected: list[str]  # the reasoning modules chosen
    adapted: str  # those modules rephrased for the task
    structure: str  # the reasoning structure the samples follow ("" when there is none)
    greedy: Candidate | None  # the temperature-0 answer (None when its call failed)


def parse_module_numbers(text: str, limit: int) -> list[int]:
    """0-based module positions from a reply like "[2, 5, 9]" (a JSON list first, else any
    numbers), deduplicated, in range, at most `limit`."""
    numbers: list[int] = []
    for m in re.finditer(r"\[[^\[\]]*\]", text):
        try:
            value = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            numbers = value
    if not numbers:
        numbers = [int(m) for m in re.findall(r"\b\d+\b", text)]
    out = list(dict.fromkeys(n - 1 for n in numbers if 1 <= n <= len(REASONING_MODULES)))
    return out[:limit]


async def _discover(
    state: DeepThinkState, runtime: Runtime[RunContext], prompt: str, node: str
) -> tuple[str | None, dict[str, Any]]:
    """One self-discover call; (reply, update) with the reply None and a note when it fails."""
    call = helper_params(state, temperature=DISCOVER_TEMPERATURE, max_tokens=DISCOVER_MAX_TOKENS)
    try:
        completion = await runtime.context.llm.chat([{"role": "user", "content": prompt}], node=node, **call)
    except UpstreamError as exc:
        return None, {"notes": [f"{node}: failed, going on without it: {exc.message}"]}
    text = completion.text.strip()
    update: dict[str, Any] = {"usage": completion.usage}
    if not text:
        update["notes"] = [f"{node}: came back empty, going on without it"]
    return text or None, update


async def select_modules(state: DeepThinkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    limit = int(state["params"]["reasoning_modules_limit"])
    listed = "\n".join(f"{i + 1}. {m}" for i, m in enumerate(REASONING_MODULES))
    prompt = SELECT_PROMPT.format(
        task=last_user_text(state["messages"]), modules=listed, low=min(MIN_MODULES, limit), limit=limit
    )
    reply, update = await _discover(state, runtime, prompt, "select_modules")
    chosen = parse_module_numbers(reply or "", limit)
    if not chosen:
        chosen = list(DEFAULT_MODULES[:limit])
        if reply:
            update["notes"] = [f"select_modules: no module numbers in {reply[:120]!r}, using defaults"]
    return {**update, "selected": [REASONING_MODULES[i] for i in chosen]}


async def adapt_modules(state: DeepThinkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    selected = "\n".join(f"- {m}" for m in state.get("selected") or ())
    prompt = ADAPT_PROMPT.format(task=last_user_text(state["messages"]), selected=selected)
    reply, update = await _discover(state, runtime, prompt, "adapt_modules")
    return {**update, "adapted": reply or selected}


async def implement_structure(state: DeepThinkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    prompt = IMPLEMENT_PROMPT.format(task=last_user_text(state["messages"]), adapted=state.get("adapted") or "")
    reply, update = await _discover(state, runtime, prompt, "implement_structure")
    return {**update, "structure": reply or state.get("adapted") or ""}


def solve_messages(state: DeepThinkState) -> list[dict[str, Any]]:
    structure = (state.get("structure") or "").strip()
    instructions = SOLVE_INSTRUCTIONS.format(structure=structure) if structure else SOLVE_INSTRUCTIONS_PLAIN
    return with_system_instructions(state["messages"], instructions)


async def sample(state: DeepThinkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """k samples following the structure; if every one fails, the greedy answer decides alone."""
    params = state["params"]
    try:
        return await sample_candidates(
            state,
            runtime,
            n=int(params["deepthink_samples"]),
            node="sample",
            messages=solve_messages(state),
            temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE),
            top_p=params["top_p"],
            max_tokens=params.get("max_tokens"),
        )
    except UpstreamError as exc:
        return {"notes": [f"sample: every sample failed: {exc.message}"]}


async def greedy(state: DeepThinkState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The temperature-0 answer the run falls back to when the samples disagree."""
    call = generation_params(state, temperature=0.0, max_tokens=state["params"].get("max_tokens"))
    call.pop("top_p", None)
    try:
        completion = await runtime.context.llm.chat(solve_messages(state), node="greedy", **call)
    except UpstreamError as exc:
        return {"greedy": None, "notes": [f"greedy: failed: {exc.message}"]}
    return {"greedy": candidates_from(completion)[0], "usage": completion.usage}


async def decide(state: DeepThinkState) -> dict[str, Any]:
    """The majority sample when enough samples agree, else the greedy answer."""
    samples = sorted_candidates(state)
    found = state.get("greedy")
    k = int(state["params"]["deepthink_samples"])
    if not samples:
        if found is None:
            raise UpstreamError("deepthink: every sample and the greedy answer failed")
        return {"answers": [answer_of(found)], "notes": ["decide: no samples, greedy answer"]}
    result = vote_candidates(samples)
    agree = len(result.top.members)
    confidence = agree / max(k, len(samples))
    confident = confidence >= float(state["params"]["confidence_threshold"])
    if confident or found is None:
        chosen, why = samples[result.winner], "majority sample" if confident else "majority sample (greedy failed)"
    else:
        chosen, why = found, "greedy answer"
    note = f"decide: confidence {confidence:.2f} ({agree} of {k} agree: {vote_summary(result)}) -> {why}"
    return {"answers": [answer_of(chosen)], "notes": [note]}


def start(state: DeepThinkState) -> str | list[str]:
    return "select_modules" if state["params"]["enable_self_discover"] else ["sample", "greedy"]


def build() -> StateGraph:
    graph = StateGraph(DeepThinkState, context_schema=RunContext)
    graph.add_node("select_modules", select_modules)
    graph.add_node("adapt_modules", adapt_modules)
    graph.add_node("implement_structure", implement_structure)
    graph.add_node("sample", sample)
    graph.add_node("greedy", greedy)
    graph.add_node("decide", decide)
    graph.add_conditional_edges(START, start, ["select_modules", "sample", "greedy"])
    graph.add_edge("select_modules", "adapt_modules")
    graph.add_edge("adapt_modules", "implement_structure")
    graph.add_edge("implement_structure", "sample")
    graph.add_edge("implement_structure", "greedy")
    graph.add_edge(["sample", "greedy"], "decide")
    graph.add_edge("decide", END)
    return graph


SPEC = ApproachSpec(
    name="deepthink",
    description="Deep think: self-discovers a reasoning structure, then k samples and a greedy answer; "
    "the majority if confident, else the greedy one.",
    build=build,
    params=DeepThinkParams,
    papers=("arXiv:2402.03620", "arXiv:2312.11805"),
    calls="3 * enable_self_discover + 2",
    rounds="3 * enable_self_discover + 1",
    streams_final=False,
)
