"""`self_consistency`: "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(Wang et al., 2022, arXiv 2203.11171). Sample several reasoning paths, extract each one's final
answer, and return a response that reaches the most common answer. Responses are grouped by their
extracted answer (as the paper does), not by whole-text similarity; only responses with no
extractable answer are grouped by similarity. Responses that call tools vote on their calls (names
and canonical JSON arguments), and the winner's whole message is returned. A response cut at
`max_tokens` does not vote unless every response was cut.

Adaptive by default (after "Let's Sample Step by Step: Adaptive-Consistency", Aggarwal et al., 2023,
arXiv 2305.11860): `batch` paths per round, and after each round the stopping rule
(`optigraph.nodes.adaptive`) decides whether more paths could still change the vote; `samples` is
the most drawn. The default rule stops once the leader is `min_lead` (2) votes ahead after
`min_samples` (2) paths, or once the paths left could not overturn it: two agreeing paths settle an
easy question, a split one gets the full budget. `adaptive: false` draws all `samples` at once.

Graph: START -> sample -> (sample again | vote) -> END. Adaptive: at most ceil(samples / batch)
calls, one per round (the formulas give that full path; expected: ceil(min_samples / batch) when the
first paths agree). Fixed: 1 call (`samples` completions, concurrent when the backend cannot return
n), 1 round.
"""

from __future__ import annotations

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

DEFAULT_TEMPERATURE = 1.0


class SelfConsistencyParams(AdaptiveParams):
    samples: int = Field(5, ge=1, le=64, description="Reasoning paths to sample (adaptive: at most).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    similarity_threshold: float = Field(
        SIMILARITY_THRESHOLD, ge=0.0, le=1.0, description="Text similarity grouping free-text responses."
    )


class SelfConsistencyState(AdaptiveState, total=False):
    pass


def build() -> StateGraph:
    graph = StateGraph(SelfConsistencyState, context_schema=RunContext)
    graph.add_node("sample", sample_round(budget="samples", default_temperature=DEFAULT_TEMPERATURE))
    graph.add_node("vote", vote)
    graph.add_edge(START, "sample")
    graph.add_conditional_edges("sample", sample_or_vote(budget="samples"), ["sample", "vote"])
    graph.add_edge("vote", END)
    return graph


SPEC = ApproachSpec(
    name="self_consistency",
    description="Self-consistency: samples reasoning paths until the majority answer is settled (or all "
    "`samples` with adaptive: false), returns one with the majority answer.",
    build=build,
    params=SelfConsistencyParams,
    papers=("arXiv:2203.11171", "arXiv:2305.11860"),
    calls=formula(CALLS, "samples"),
    rounds=formula(CALLS, "samples"),
    expected_calls=formula(EXPECTED_CALLS, "samples"),
    streams_final=False,
)
