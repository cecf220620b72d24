"""`majority_voting`: sample k responses at once, extract each one's final answer, return a response
that reaches the most common answer. The voting half of self-consistency (Wang et al., arXiv
2203.11171) with OptILLM's defaults for its plugin: k = 8 at the client's temperature, else 0.6.

Answers are extracted by the shared extractor (`\\boxed{}`, "final answer:", "the answer is", `####`,
a lone choice letter, the last number; `<think>` blocks ignored) and normalised, so "7", "7.0" and
"$7$" agree. Responses that call tools vote on the calls (function names and canonical JSON
arguments) and the winner's whole message, tool calls included, is returned. Ties go to the answer
that appeared first; responses with no extractable answer are grouped by text similarity.

Graph: START -> sample -> vote -> END. 1 call (k completions; k concurrent calls where the backend
cannot return n), 1 round.
"""

from __future__ import annotations

from langgraph.graph import StateGraph
from pydantic import Field

from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.votes import SIMILARITY_THRESHOLD
from optigraph.graphs.chain import chain
from optigraph.nodes.sample import sample_node
from optigraph.nodes.vote import vote

DEFAULT_TEMPERATURE = 0.6


class MajorityVotingParams(ApproachParams):
    k: int = Field(8, ge=1, le=64, description="Responses to sample and vote over.")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE)
    similarity_threshold: float = Field(
        SIMILARITY_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="Text similarity grouping responses with no extractable answer.",
    )


def build() -> StateGraph:
    return chain(("sample", sample_node(count="k", default_temperature=DEFAULT_TEMPERATURE)), ("vote", vote))


SPEC = ApproachSpec(
    name="majority_voting",
    description="Majority voting: samples k responses, returns one reaching the most common answer (or tool call).",
    build=build,
    params=MajorityVotingParams,
    papers=("arXiv:2203.11171",),
    calls="1",
    rounds="1",
    streams_final=False,
)
