"""`moa`: mixture of agents with one model. "Mixture-of-Agents Enhances Large Language Model
Capabilities" (Wang et al., 2024, arXiv 2406.04692) layers several models' answers; "Patched MOA:
optimizing inference for diverse software development tasks" (Sharma, 2024, arXiv 2407.18521) does
it with one model: sample three candidates, critique them, and aggregate a final answer.

Graph: START -> sample -> critique -> aggregate -> END. 3 calls (the first with n completions) in 3
dependent rounds; the aggregate streams to the client.
"""

from __future__ import annotations

from langgraph.graph import StateGraph
from pydantic import Field

from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.graphs.chain import chain
from optigraph.nodes import critique as critique_node
from optigraph.nodes.aggregate import DEFAULT_TEMPERATURE as AGGREGATE_TEMPERATURE
from optigraph.nodes.aggregate import aggregate
from optigraph.nodes.critique import CritiqueState, critique
from optigraph.nodes.sample import sample_node

SAMPLE_TEMPERATURE = 1.0  # of the candidates, when neither the parameter nor the client sets one


class MoaParams(ApproachParams):
    n: int = Field(3, ge=1, le=16, description="Candidates to sample before critique and aggregation.")
    temperature: float | None = client_temperature(SAMPLE_TEMPERATURE)
    critique_temperature: float = Field(critique_node.DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    critique_max_tokens: int = Field(critique_node.DEFAULT_MAX_TOKENS, ge=1, le=32768)
    aggregate_temperature: float | None = client_temperature(AGGREGATE_TEMPERATURE, "Temperature of the final answer")


def build() -> StateGraph:
    return chain(
        ("sample", sample_node(count="n", default_temperature=SAMPLE_TEMPERATURE)),
        ("critique", critique),
        ("aggregate", aggregate),
        state=CritiqueState,
    )


SPEC = ApproachSpec(
    name="moa",
    description="Mixture of agents: samples 3 candidates, critiques them, aggregates a final answer.",
    build=build,
    params=MoaParams,
    papers=("arXiv:2406.04692", "arXiv:2407.18521"),
    calls="3",
    rounds="3",
    streams_final=True,
)
