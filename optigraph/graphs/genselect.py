"""`genselect`: generative selection, from "AIMO-2 Winning Solution: Building State-of-the-Art
Mathematical Reasoning Models with OpenMathReasoning dataset" (Moshkov et al., 2025, arXiv
2504.16891). Sample several candidate solutions, then show them all to the model at once and let it
compare them and name the best: picking among solutions side by side is easier and better
calibrated than scoring each alone.

The paper compares short summaries of long solutions; here the judge sees each candidate without its
`<think>` scratch work, which is the same economy for reasoning models. The judge ends its analysis
with "BEST CANDIDATE: k", read loosely; if it names none (or the call fails) the answer falls back to
a majority vote over the candidates, and a note says so.

Graph: START -> sample -> compare -> END. 2 calls (the first with `num_candidates` completions), 2
dependent rounds; a lone surviving candidate needs no comparison.
"""

from __future__ import annotations

from langgraph.graph import StateGraph
from pydantic import Field

from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.graphs.chain import chain
from optigraph.nodes import compare as compare_node
from optigraph.nodes.compare import compare
from optigraph.nodes.sample import sample_node

DEFAULT_TEMPERATURE = 0.7


class GenSelectParams(ApproachParams):
    num_candidates: int = Field(4, ge=2, le=16, description="Candidate solutions to sample.")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    comparison_temperature: float = Field(compare_node.DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    comparison_max_tokens: int = Field(compare_node.DEFAULT_MAX_TOKENS, ge=1, le=32768)


def build() -> StateGraph:
    return chain(
        ("sample", sample_node(count="num_candidates", default_temperature=DEFAULT_TEMPERATURE)), ("compare", compare)
    )


SPEC = ApproachSpec(
    name="genselect",
    description="GenSelect: samples candidates, the model compares them side by side and picks the best.",
    build=build,
    params=GenSelectParams,
    papers=("arXiv:2504.16891",),
    calls="2",
    rounds="2",
    streams_final=False,
)
