"""`self_consistency`: "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(Wang et al., 2022, arXiv 2203.11171). Sample several reasoning paths at once, extract each one's
final answer, and return a response that reaches the most common answer. Responses are grouped by
their extracted answer (as the paper does), not by whole-text similarity; only responses with no
extractable answer are grouped by similarity.

Graph: START -> sample -> vote -> END. 1 call (`samples` completions, concurrent when the backend
cannot return n), 1 round.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from pydantic import Field

from optigraph.engine.context import RunContext
from optigraph.engine.registry import ApproachParams, ApproachSpec
from optigraph.engine.state import ApproachState
from optigraph.nodes.sample import sample_node
from optigraph.nodes.vote import SIMILARITY_THRESHOLD, vote


class SelfConsistencyParams(ApproachParams):
    samples: int = Field(5, ge=1, le=64, description="Reasoning paths to sample.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Sampling temperature; default: the client's, else 1.0."
    )
    similarity_threshold: float = Field(
        SIMILARITY_THRESHOLD, ge=0.0, le=1.0, description="Text similarity grouping free-text responses."
    )


def build() -> StateGraph:
    graph = StateGraph(ApproachState, context_schema=RunContext)
    graph.add_node("sample", sample_node(count="samples", default_temperature=1.0))
    graph.add_node("vote", vote)
    graph.add_edge(START, "sample")
    graph.add_edge("sample", "vote")
    graph.add_edge("vote", END)
    return graph


SPEC = ApproachSpec(
    name="self_consistency",
    description="Self-consistency: samples several reasoning paths, returns one with the majority answer.",
    build=build,
    params=SelfConsistencyParams,
    papers=("arXiv:2203.11171",),
    calls="1",
    rounds="1",
    streams_final=False,
)
