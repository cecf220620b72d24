"""`bon`: best of n. Sample n candidates, rate each with the LLM as a judge, return the best.

Sampling and ranking by a judge score is the rejection-sampling baseline of, e.g., "Let's Verify Step
by Step" (Lightman et al., arXiv 2305.20050) and "Training Verifiers to Solve Math Word Problems"
(Cobbe et al., arXiv 2110.14168), here with the model itself as the verifier.

The candidates reaching the same answer pool their ratings (`selection="weighted_vote"`, the default;
nodes/select.py says why): measured on Qwen2.5-Coder-1.5B, the model rated every candidate 8 or 9, so
the best rating alone picked the first of equals (docs/eval.md).

Graph: START -> sample -> rate x n (concurrent `Send` branches) -> select -> END.
Cost: 1 sampling call (n completions) + n rating calls, in 2 dependent rounds.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState
from optigraph.nodes.rate import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    rate,
    rate_each,
)
from optigraph.nodes.sample import sample_node
from optigraph.nodes.select import select

SAMPLE_TEMPERATURE = 1.0  # of the candidates, when neither the parameter nor the client sets one


class BonParams(ApproachParams):
    n: int = Field(3, ge=1, le=32, description="Candidates to sample.")
    temperature: float | None = client_temperature(SAMPLE_TEMPERATURE)
    rating_temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    rating_max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, le=32768)
    selection: Literal["weighted_vote", "score"] = Field(
        "weighted_vote",
        description=(
            "How the answer is chosen: `weighted_vote` sums the ratings of the candidates that reach the same "
            "answer and returns the best-rated member of the top group; `score` returns the best-rated candidate "
            "(first on ties), as OptILLM does."
        ),
    )


def route_ratings(state: ApproachState) -> list[Send] | str:
    """Rates each candidate concurrently; a lone candidate needs no rating."""
    return rate_each(state) if len(state.get("candidates") or []) > 1 else "select"


def build() -> StateGraph:
    graph = StateGraph(ApproachState, context_schema=RunContext)
    graph.add_node("sample", sample_node(count="n", default_temperature=SAMPLE_TEMPERATURE))
    graph.add_node("rate", rate)
    graph.add_node("select", select)
    graph.add_edge(START, "sample")
    graph.add_conditional_edges("sample", route_ratings, ["rate", "select"])
    graph.add_edge("rate", "select")
    graph.add_edge("select", END)
    return graph


SPEC = ApproachSpec(
    name="bon",
    description=(
        "Best of n: samples n candidates, rates each 0-10 with the model, returns the best "
        "(ratings of candidates with the same answer add up)."
    ),
    build=build,
    params=BonParams,
    papers=("arXiv:2305.20050", "arXiv:2110.14168"),
    calls="1 + n",
    rounds="2",
    streams_final=False,
)
