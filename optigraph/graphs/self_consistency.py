"""`self_consistency`: "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(Wang et al., 2022, arXiv 2203.11171). Sample several reasoning paths at once, extract each one's
final answer, and return a response that reaches the most common answer. Responses are grouped by
their extracted answer (as the paper does), not by whole-text similarity; only responses with no
extractable answer are grouped by similarity. Responses that call tools vote on their calls (names
and canonical JSON arguments), and the winner's whole message is returned.

With `adaptive`, sampling follows "Let's Sample Step by Step: Adaptive-Consistency for Efficient
Reasoning and Coding with LLMs" (Aggarwal et al., 2023, arXiv 2305.11860): `batch` paths per round,
and after each round a Beta posterior over the two leading answers' shares says how likely the
leader is to stay ahead; sampling stops once that is at least `stop_threshold`, or at `max_samples`.
Easy questions stop after one or two rounds; hard ones get the full budget.

Graph: START -> sample -> (sample again | vote) -> END. Fixed: 1 call (`samples` completions,
concurrent when the backend cannot return n), 1 round. Adaptive: at most ceil(max_samples / batch)
calls, one per round; the formulas give that full path.
"""

from __future__ import annotations

import math
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field, model_validator

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState, sorted_candidates
from optigraph.core.votes import (
    SIMILARITY_THRESHOLD,
    leader_probability,
    vote_candidates,
    vote_margin,
)
from optigraph.errors import UpstreamError
from optigraph.nodes.sample import param_or_client, sample_candidates
from optigraph.nodes.vote import vote

DEFAULT_TEMPERATURE = 1.0
MAX_ROUNDS = 16  # keeps an adaptive run well inside the graph's step limit


class SelfConsistencyParams(ApproachParams):
    samples: int = Field(5, ge=1, le=64, description="Reasoning paths to sample (when not adaptive).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    similarity_threshold: float = Field(
        SIMILARITY_THRESHOLD, ge=0.0, le=1.0, description="Text similarity grouping free-text responses."
    )
    adaptive: bool = Field(False, description="Sample in rounds of `batch` and stop once the majority is clear.")
    batch: int = Field(4, ge=1, le=64, description="Adaptive: paths sampled per round.")
    max_samples: int = Field(16, ge=1, le=64, description="Adaptive: most paths sampled in all.")
    stop_threshold: float = Field(
        0.95,
        gt=0.5,
        le=1.0,
        description="Adaptive: stop once P(leading answer stays ahead of the runner-up) reaches this.",
    )

    @model_validator(mode="after")
    def _bounded_rounds(self) -> SelfConsistencyParams:
        if self.adaptive and math.ceil(self.max_samples / self.batch) > MAX_ROUNDS:
            raise ValueError(f"max_samples / batch allows more than {MAX_ROUNDS} rounds; raise batch")
        return self


class SelfConsistencyState(ApproachState, total=False):
    drawn: int  # samples requested so far, over every round


def round_size(params: dict[str, Any], drawn: int) -> int:
    if not params.get("adaptive"):
        return int(params["samples"])
    return min(int(params["batch"]), int(params["max_samples"]) - drawn)


async def sample(state: SelfConsistencyState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One round of samples, numbered after the earlier rounds'. A later adaptive round whose calls
    all fail ends the sampling (noted); the first one failing fails the run."""
    params = state.get("params") or {}
    drawn = int(state.get("drawn") or 0)
    n = round_size(params, drawn)
    temperature = param_or_client(state, "temperature", DEFAULT_TEMPERATURE)
    try:
        out = await sample_candidates(state, runtime, n=n, node="sample", temperature=temperature)
    except UpstreamError as exc:
        if not state.get("candidates"):
            raise
        return {
            "drawn": int(params["max_samples"]),
            "notes": [f"sample: round failed, voting on what we have: {exc.message}"],
        }
    candidates = [{**c, "index": drawn + c.get("index", 0)} for c in out["candidates"]]
    return {**out, "candidates": candidates, "drawn": drawn + n}


def sample_or_vote(state: SelfConsistencyState) -> str:
    """Adaptive stopping: another round unless the leader is clear or the budget is spent."""
    params = state.get("params") or {}
    if not params.get("adaptive") or int(state.get("drawn") or 0) >= int(params["max_samples"]):
        return "vote"
    threshold = params.get("similarity_threshold", SIMILARITY_THRESHOLD)
    leader, runner_up = vote_margin(vote_candidates(sorted_candidates(state), threshold=threshold))
    return "vote" if leader_probability(leader, runner_up) >= params["stop_threshold"] else "sample"


def build() -> StateGraph:
    graph = StateGraph(SelfConsistencyState, context_schema=RunContext)
    graph.add_node("sample", sample)
    graph.add_node("vote", vote)
    graph.add_edge(START, "sample")
    graph.add_conditional_edges("sample", sample_or_vote, ["sample", "vote"])
    graph.add_edge("vote", END)
    return graph


SPEC = ApproachSpec(
    name="self_consistency",
    description="Self-consistency: samples several reasoning paths, returns one with the majority answer "
    "(optionally adaptive: stops sampling once the majority is clear).",
    build=build,
    params=SelfConsistencyParams,
    papers=("arXiv:2203.11171", "arXiv:2305.11860"),
    calls="1 + adaptive * (ceil(max_samples / batch) - 1)",
    rounds="1 + adaptive * (ceil(max_samples / batch) - 1)",
    streams_final=False,
)
