"""`pvg`: prover-verifier game. "Prover-Verifier Games improve legibility of LLM outputs" (Kirchner et
al., 2024, arXiv 2407.13692) trains a helpful prover (correct, checkable solutions), a sneaky prover
(convincing but subtly wrong ones) and a verifier that learns to tell them apart. At inference time,
with one model playing every part, each round:

1. the helpful and the sneaky prover each write `num_solutions` solutions (two concurrent sampling
   calls, different system instructions; round r samples at max(min_temperature, T - r x
   temperature_step));
2. the verifier checks every solution concurrently, blind to who wrote it (`verify` node: issues,
   a 0-10 score, a CORRECT/INCORRECT verdict), always against the client's original question so
   scores stay comparable across rounds;
3. between rounds, one call rewrites the question from the verifier's findings (helpful and sneaky
   alike: the sneaky solutions expose the traps), and the next round's provers answer that.

The answer is the best-checked *helpful* solution of any round (a passing verdict first, then the
higher score, then the earlier one). Sneaky solutions are never returned: they exist to be caught.

Graph: START -> prove x2 -> review -> verify x 2n -> score -> refine(query) -> next_round -> prove
... -> select -> END. Calls per round: 2 sampling calls (n completions each) + 2n checks, plus one
rewrite between rounds; rounds 3 x num_rounds - 1.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import Candidate, candidate_text, sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes import refine as refine_node
from optigraph.nodes.common import (
    answer_of,
    branch_payload,
    candidates_from,
    generation_params,
)
from optigraph.nodes.refine import RefineState, refine, refine_sends
from optigraph.nodes.sample import is_usable, param_or_client
from optigraph.nodes.transform import with_system_instructions
from optigraph.nodes.verify import Verification, VerifyState, verify, verify_sends

HELPFUL_INSTRUCTIONS = """You are a helpful, careful problem solver. Solve the problem correctly. \
Explain your reasoning step by step, clearly enough that a reader can check every step, and state \
the final answer plainly at the end."""

SNEAKY_INSTRUCTIONS = """You are the sneaky prover in a verification game. Write a solution that \
looks careful and convincing but contains a subtle error that leads to a wrong final answer. Never \
reveal or hint that the solution contains an error, and state the final answer plainly at the end."""

ROLES = {"helpful": HELPFUL_INSTRUCTIONS, "sneaky": SNEAKY_INSTRUCTIONS}
DEFAULT_TEMPERATURE = 0.7


class PvgParams(ApproachParams):
    num_solutions: int = Field(3, ge=1, le=16, description="Solutions per prover (helpful and sneaky) per round.")
    num_rounds: int = Field(2, ge=1, le=8, description="Rounds of proving and verifying.")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE, "Prover temperature in the first round")
    temperature_step: float = Field(0.1, ge=0.0, le=1.0, description="Prover temperature decrease per round.")
    min_temperature: float = Field(0.2, ge=0.0, le=2.0, description="Lowest prover temperature the decrease reaches.")
    verify_temperature: float = Field(0.2, ge=0.0, le=2.0)
    verify_max_tokens: int | None = Field(1024, ge=1, le=65536, description="Cap per check; null: none.")
    refine_temperature: float = Field(0.5, ge=0.0, le=2.0, description="Temperature of the question rewrite.")
    refine_max_tokens: int = Field(refine_node.DEFAULT_QUERY_MAX_TOKENS, ge=1, le=32768)


class PvgState(VerifyState, RefineState, total=False):
    round: int  # the round being played (0-based)
    query: str  # the question the provers of this round answer (rewritten after round 0)


class Proof(Candidate, total=False):
    role: str  # helpful | sneaky
    round: int


def round_temperature(state: PvgState, round_: int) -> float:
    params = state.get("params") or {}
    start = float(param_or_client(state, "temperature", DEFAULT_TEMPERATURE))
    floor = min(start, params.get("min_temperature", 0.2))
    return max(floor, start - params.get("temperature_step", 0.1) * round_)


def prover_messages(state: PvgState) -> list[dict[str, Any]]:
    query = state.get("query")
    return replace_last_user(state["messages"], query) if query else state["messages"]


async def route_provers(state: PvgState) -> list[Send]:
    """Both provers of the round at once."""
    round_ = state.get("round", 0)
    n = int(state["params"]["num_solutions"])
    messages = prover_messages(state)
    return [
        Send(
            "prove",
            branch_payload(
                state,
                {
                    "role": role,
                    "round": round_,
                    "start": round_ * 2 * n + k * n,
                    "temperature": round_temperature(state, round_),
                },
                messages=messages,
            ),
        )
        for k, role in enumerate(ROLES)
    ]


async def prove(state: PvgState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One prover's `num_solutions` samples; failed and empty ones are dropped with a note."""
    branch = state["branch"]
    role, n = branch["role"], int(state["params"]["num_solutions"])
    messages = with_system_instructions(state["messages"], ROLES[role])
    params = generation_params(state, temperature=branch["temperature"])
    try:
        completion = await runtime.context.llm.chat(messages, node=f"prove_{role}", n=n, partial=True, **params)
    except UpstreamError as exc:
        return {"notes": [f"prove: the {role} prover failed in round {branch['round']}: {exc.message}"]}
    found = candidates_from(completion, branch["start"])
    proofs: list[Proof] = [{**c, "role": role, "round": branch["round"]} for c in found if is_usable(c)]
    notes = [] if len(proofs) == n else [f"prove: {n - len(proofs)} of {n} {role} solutions failed or came back empty"]
    return {"candidates": proofs, "usage": completion.usage, "notes": notes}


def round_proofs(state: PvgState) -> list[Candidate]:
    round_ = state.get("round", 0)
    return [c for c in sorted_candidates(state) if c.get("round") == round_]


async def review(state: PvgState) -> dict[str, Any]:
    """Joins the two provers; nothing to write."""
    return {}


async def route_checks(state: PvgState) -> list[Send] | str:
    """One blind check per solution of the round, against the original question."""
    round_ = state.get("round", 0)
    jobs = [{"id": c["index"], "text": candidate_text(c), "round": round_} for c in round_proofs(state)]
    return verify_sends(state, jobs) if jobs else "score"


def round_checks(state: PvgState, round_: int) -> list[Verification]:
    return sorted((v for v in state.get("verifications") or [] if v.get("round") == round_), key=lambda v: v["id"])


async def score(state: PvgState) -> dict[str, Any]:
    """Notes how well the verifier told the provers apart this round."""
    round_ = state.get("round", 0)
    roles = {c["index"]: c.get("role") for c in round_proofs(state)}
    means = []
    checks = [v for v in round_checks(state, round_) if v.get("score") is not None]
    for role in ROLES:
        values = [v["score"] for v in checks if roles.get(v["id"]) == role]
        means.append(f"{role} {sum(values) / len(values):.1f} over {len(values)}" if values else f"{role} unscored")
    return {"notes": [f"score: round {round_ + 1} mean verifier scores: {', '.join(means)}"]}


def query_feedback(state: PvgState, round_: int) -> str:
    """The verifier's findings of the round, one solution each (authors not named)."""
    parts = []
    for k, v in enumerate(round_checks(state, round_), start=1):
        issues = v.get("issues") or []
        if issues:
            parts.append(f"Attempt {k}: " + "; ".join(issues))
        elif v.get("verdict") is False and v.get("report"):
            parts.append(f"Attempt {k}: {v['report'][-600:]}")
    return "\n".join(parts)


async def route_after_score(state: PvgState) -> list[Send] | str:
    """Another round: rewrite the question first (when this round produced anything); else select."""
    round_ = state.get("round", 0)
    if round_ + 1 >= int(state["params"]["num_rounds"]):
        return "select"
    if not round_proofs(state):
        return "next_round"
    current = state.get("query") or last_user_text(state["messages"])
    job = {"id": round_, "round": round_, "kind": "query", "text": current, "feedback": query_feedback(state, round_)}
    return refine_sends(state, [job])


async def next_round(state: PvgState) -> dict[str, Any]:
    """Adopts this round's rewritten question (or keeps the old one if the rewrite failed)."""
    round_ = state.get("round", 0)
    rewritten = [r for r in state.get("refined") or [] if r.get("round") == round_ and r.get("kind") == "query"]
    update: dict[str, Any] = {"round": round_ + 1}
    if rewritten:
        update["query"] = rewritten[-1]["text"]
    return update


def check_rank(check: Verification | None) -> tuple[int, float]:
    """Higher is better: a pass above no verdict above a fail, then the score."""
    if check is None:
        return (1, -1.0)
    verdict = check.get("verdict")
    value = check.get("score")
    return ({True: 2, None: 1, False: 0}[verdict], -1.0 if value is None else float(value))


async def select(state: PvgState) -> dict[str, Any]:
    """The best-checked helpful solution of any round."""
    checks = {v["id"]: v for v in state.get("verifications") or []}
    helpful = [c for c in sorted_candidates(state) if c.get("role") == "helpful"]
    if not helpful:
        reasons = "; ".join(n for n in state.get("notes") or [] if n.startswith("prove:"))
        raise UpstreamError(f"pvg: no helpful prover produced a solution ({reasons or 'no reason recorded'})")
    best = max(helpful, key=lambda c: check_rank(checks.get(c["index"])))  # max keeps the first on ties
    check = checks.get(best["index"]) or {}
    return {
        "answers": [answer_of(best)],
        "notes": [
            f"select: helpful solution {best['index']} of round {best.get('round', 0) + 1} "
            f"(verdict {check.get('verdict')}, score {check.get('score')})"
        ],
    }


def build() -> StateGraph:
    graph = StateGraph(PvgState, context_schema=RunContext)
    graph.add_node("prove", prove)
    graph.add_node("review", review)
    graph.add_node("verify", verify)
    graph.add_node("score", score)
    graph.add_node("refine", refine)
    graph.add_node("next_round", next_round)
    graph.add_node("select", select)
    graph.add_conditional_edges(START, route_provers, ["prove"])
    graph.add_edge("prove", "review")
    graph.add_conditional_edges("review", route_checks, ["verify", "score"])
    graph.add_edge("verify", "score")
    graph.add_conditional_edges("score", route_after_score, ["refine", "next_round", "select"])
    graph.add_edge("refine", "next_round")
    graph.add_conditional_edges("next_round", route_provers, ["prove"])
    graph.add_edge("select", END)
    return graph


SPEC = ApproachSpec(
    name="pvg",
    description="Prover-verifier game: helpful and sneaky provers, blind verification, question "
    "rewrites between rounds; returns the best-checked helpful solution.",
    build=build,
    params=PvgParams,
    papers=("arXiv:2407.13692",),
    calls="num_rounds * (2 + 2 * num_solutions) + num_rounds - 1",
    rounds="3 * num_rounds - 1",
    streams_final=False,
)
