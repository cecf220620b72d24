"""`plansearch`: "Planning In Natural Language Improves LLM Search For Code Generation" (Wang et al.,
2024, arXiv 2409.03733). Searching over ideas, not over code: the model lists first-order
observations about the task, then, for each chosen subset of them, derives second-order observations
from that combination, writes a natural-language solution from the subset and what it derived, and
implements it. Different subsets lead to different plans, which is where the diversity of the search
comes from (sampling one prompt many times mostly repeats the same idea).

Unlike a single observations -> solution chain, the subsets are the paper's combinatorial search:
subsets of `subset_size` observations (then smaller ones, then repeats) in a fixed order, one per
solution, each branch running concurrently (`Send`). With several solutions the model compares the
implementations side by side in one call (the shared `compare` node: choosing among candidates is
easier for a model than scoring each alone, and costs one call instead of one per solution); a
client asking for n choices gets n independent searches from the engine. The prompts ask for code
only when the task asks for it, so a non-code question gets planned reasoning and a plain answer.

Robustness: a failed or unparsable observation step leaves the branches planning from the task
alone; a failed derive or sketch step leaves its branch implementing from what it has; failed or
empty implementations are dropped (noted), and the run fails only when none came back. An
unreadable or failed comparison falls back to a vote among the implementations (noted).

Graph: START -> observe -> derive x k -> sketch x k -> implement x k -> choose -> END.
Cost (k = num_solutions): 1 observation call, k derive calls (none when num_derived is 0), k sketch
and k implement calls, and one comparison when k > 1; 3 to 5 dependent rounds. With one solution
the implementation is the final stage and streams.
"""

from __future__ import annotations

import itertools
import operator
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState, Candidate, sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes import plan
from optigraph.nodes.common import branch_payload, candidates_from, generation_params
from optigraph.nodes.compare import compare
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import is_usable, param_or_client

DEFAULT_TEMPERATURE = 0.7


class PlanSearchParams(ApproachParams):
    num_observations: int = Field(3, ge=1, le=12, description="First-order observations to ask for.")
    num_derived: int = Field(
        2, ge=0, le=12, description="Second-order observations derived from each subset (0: skip that step)."
    )
    num_solutions: int = Field(3, ge=1, le=16, description="Observation subsets to plan and implement, concurrently.")
    subset_size: int = Field(2, ge=1, le=6, description="Observations combined per subset (smaller ones follow).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE, "Temperature of the implementations")
    planning_temperature: float = Field(
        plan.DEFAULT_TEMPERATURE, ge=0.0, le=2.0, description="Temperature of the observation and plan steps."
    )
    planning_max_tokens: int = Field(
        plan.DEFAULT_MAX_TOKENS, ge=1, le=32768, description="Longest reply of an observation or plan step."
    )


class PlanSearchState(ApproachState, total=False):
    observations: list[str]  # first-order observations
    plans: Annotated[list[dict[str, Any]], operator.add]  # per branch: index, subset, derived, plan


def observation_subsets(available: int, count: int, size: int) -> list[tuple[int, ...]]:
    """`count` subsets of observation positions: every subset of `size` in order, then smaller ones,
    then the same again (more solutions than distinct subsets sample the same ideas twice). With no
    observations every subset is empty."""
    if available <= 0:
        return [()] * count
    pool = [c for s in range(min(size, available), 0, -1) for c in itertools.combinations(range(available), s)]
    return [pool[i % len(pool)] for i in range(count)]


def _payload(state: ApproachState, **branch: Any) -> dict[str, Any]:
    return branch_payload(state, branch, stream=True)


def fan_out(state: PlanSearchState) -> list[Send]:
    """One branch per observation subset."""
    params = state.get("params") or {}
    observations = list(state.get("observations") or [])
    subsets = observation_subsets(len(observations), int(params["num_solutions"]), int(params["subset_size"]))
    return [
        Send("derive", _payload(state, index=i, subset=[observations[j] for j in s])) for i, s in enumerate(subsets)
    ]


async def derive(state: ApproachState, runtime: Runtime[RunContext]) -> Command:
    """Second-order observations from this branch's subset (no call when there is nothing to do)."""
    branch = state["branch"]
    count = int((state.get("params") or {})["num_derived"])
    update: dict[str, Any] = {}
    derived: list[str] = []
    if branch["subset"] and count > 0:
        result = await plan.derive(state, runtime, branch["subset"], count=count, node="derive")
        derived = result.items
        update = result.update()
    return Command(update=update, goto=Send("sketch", _payload(state, **branch, derived=derived)))


async def sketch(state: ApproachState, runtime: Runtime[RunContext]) -> Command:
    """A natural-language solution from the subset and what was derived from it."""
    branch = state["branch"]
    observations = [*branch["subset"], *branch["derived"]]
    result = await plan.sketch(state, runtime, observations, node="sketch")
    record = {"index": branch["index"], "subset": branch["subset"], "derived": branch["derived"], "plan": result.text}
    update = result.update(plans=[record])
    return Command(update=update, goto=Send("implement", _payload(state, **branch, plan=result.text)))


async def implement(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The solution following this branch's plan: one candidate, or a note when the call failed.
    A lone branch is the final answer, so it streams."""
    branch = state["branch"]
    index: int = branch["index"]
    messages = plan.follow_plan_messages(state["messages"], branch["plan"], [*branch["subset"], *branch["derived"]])
    call = generation_params(state, temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE))
    single = int((state.get("params") or {})["num_solutions"]) == 1
    try:
        if single:
            completion = await generate_final(state, runtime, messages, node="implement", **call)
        else:
            completion = await runtime.context.llm.chat(messages, node="implement", **call)
    except UpstreamError as exc:
        return {"notes": [f"implement: solution {index} failed: {exc.message}"]}
    candidates = candidates_from(completion, start=index)
    notes = [] if is_usable(candidates[0]) else [f"implement: solution {index} came back empty"]
    return {"candidates": candidates, "usage": completion.usage, "notes": notes}


def _usable(state: ApproachState) -> list[Candidate]:
    return [c for c in sorted_candidates(state) if is_usable(c)]


async def choose(state: PlanSearchState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Joins the branches and picks the best implementation with one comparison call (none for a
    lone one). Empty implementations take part only when nothing else came back; the run fails only
    when no implementation came back at all."""
    candidates = _usable(state) or sorted_candidates(state)
    if not candidates:
        failures = [n for n in state.get("notes") or [] if n.startswith("implement:")]
        raise UpstreamError("plansearch: every implementation failed" + (f" ({failures[-1]})" if failures else ""))
    return await compare({**state, "candidates": candidates}, runtime)


def build() -> StateGraph:
    graph = StateGraph(PlanSearchState, context_schema=RunContext)
    graph.add_node("observe", plan.observe_node(count="num_observations", key="observations", node="observe"))
    graph.add_node("derive", derive, destinations=("sketch",))
    graph.add_node("sketch", sketch, destinations=("implement",))
    graph.add_node("implement", implement)
    graph.add_node("choose", choose)
    graph.add_edge(START, "observe")
    graph.add_conditional_edges("observe", fan_out, ["derive"])
    graph.add_edge("implement", "choose")
    graph.add_edge("choose", END)
    return graph


SPEC = ApproachSpec(
    name="plansearch",
    description="PlanSearch: observations, derived observations per subset, a plan and a solution per subset, "
    "the best solution by comparison.",
    build=build,
    params=PlanSearchParams,
    papers=("arXiv:2409.03733",),
    calls="1 + num_solutions * (2 + min(1, num_derived)) + min(1, num_solutions - 1)",
    rounds="3 + min(1, num_derived) + min(1, num_solutions - 1)",
    streams_final=False,
)
