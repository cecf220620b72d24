"""`majority_voting`: sample k responses at once, extract each one's final answer, return a response
that reaches the most common answer. The voting half of self-consistency (Wang et al., arXiv
2203.11171) with OptILLM's defaults for its plugin: k = 8 at the client's temperature, else 0.6.

Answers are extracted by the shared extractor (`\\boxed{}`, "final answer:", "the answer is", `####`,
a lone choice letter, the last number; `<think>` blocks ignored) and normalised, so "7", "7.0" and
"$7$" agree. Responses that call tools vote on the calls (function names and canonical JSON
arguments) and the winner's whole message, tool calls included, is returned. Ties go to the answer
that appeared first; responses with no extractable answer are grouped by text similarity.

A response cut at `max_tokens` does not vote unless every response was cut. Sampling is adaptive by
default (`optigraph.nodes.adaptive`): rounds of `batch`, stopping once more responses could not change
the vote, at most k; `adaptive: false` draws all k at once.

Graph: START -> sample -> (sample again | vote) -> END. Adaptive: at most ceil(k / batch) calls, one per
round. Fixed: 1 call (k completions; k concurrent calls where the backend cannot return n), 1 round.
"""

from __future__ import annotations

from typing import ClassVar

from langgraph.graph import END, START, StateGraph
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachSpec, client_temperature
from optigraph.core.votes import SIMILARITY_THRESHOLD
from optigraph.nodes.adaptive import (
    CALLS,
    EXPECTED_CALLS,
    AdaptiveParams,
    AdaptiveState,
    formula,
    sample_or_vote,
    sample_round,
)
from optigraph.nodes.vote import vote

DEFAULT_TEMPERATURE = 0.6


class MajorityVotingParams(AdaptiveParams):
    budget_field: ClassVar[str] = "k"
    k: int = Field(8, ge=1, le=64, description="Responses to sample and vote over (adaptive: at most).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    similarity_threshold: float = Field(
        SIMILARITY_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="Text similarity grouping responses with no extractable answer.",
    )


def build() -> StateGraph:
    graph = StateGraph(AdaptiveState, context_schema=RunContext)
    graph.add_node("sample", sample_round(budget="k", default_temperature=DEFAULT_TEMPERATURE))
    graph.add_node("vote", vote)
    graph.add_edge(START, "sample")
    graph.add_conditional_edges("sample", sample_or_vote(budget="k"), ["sample", "vote"])
    graph.add_edge("vote", END)
    return graph


SPEC = ApproachSpec(
    name="majority_voting",
    description="Majority voting: samples k responses, returns one reaching the most common answer (or tool call).",
    build=build,
    params=MajorityVotingParams,
    papers=("arXiv:2203.11171",),
    calls=formula(CALLS, "k"),
    rounds=formula(CALLS, "k"),
    expected_calls=formula(EXPECTED_CALLS, "k"),
    streams_final=False,
)
