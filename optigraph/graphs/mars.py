"""`mars`: multi-agent reasoning. No paper of its own; it combines the self-verification pipeline of
"Gemini 2.5 Pro Capable of Winning Gold at IMO 2025" (2025, arXiv 2507.15855: solve, verify
repeatedly, fix from the verification report) with recursive self-aggregation ("Recursive
Self-Aggregation Unlocks Deep Thinking in Large Language Models", 2025, arXiv 2509.26626: a
population of solutions improved by aggregating subsets of it).

1. Explore: `num_agents` agents answer concurrently, agent i at `agent_temperatures[i % k]`.
2. Evolve, concurrently: RSA (`aggregation_loops` steps; each aggregates `aggregation_groups`
   windows of `aggregation_size` solutions into new ones; the pool keeps the newest
   `population_size`) and the strategy network (each explored solution's strategy is summarised,
   then every agent rewrites its solution with its peers' strategies: the `refine` node).
3. Verify: every solution of the pool and every enhanced one gets `verification_passes_required`
   independent checks at once (`verify` node); it is verified when all of them pass.
4. Improve: while fewer than `consensus_threshold` are verified (at most `max_iterations` times),
   each unverified solution is rewritten from its failed checks (`refine`, at 0.8 x its author's
   temperature) and checked again.
5. Final: the best verified solution (most common answer among the verified, then the highest
   verifier score); else a majority of at least `min_votes` over extracted answers; else one
   synthesis call over the three best-scored solutions, streamed to the client.

Fixed from OptILLM: a solution is one record with one integer id from birth to the end, so an
improvement always rewrites the solution that was checked, with its own author's temperature; the
checks of aggregated and enhanced solutions are recorded like any other, so they can be verified;
the passes of one check round run concurrently, not one after another; no provider-specific
`reasoning` field is sent (the client's `reasoning_effort`, when given, is forwarded to every call);
the keyword "confidence" heuristic is replaced by the verifiers' own scores. Where OptILLM checks a
solution up to `max_verification_attempts` times in a row until it passes twice running, here the
passes go out at once and must all pass, and a failed solution's second chance is its improvement.
Calls use the client's max_tokens (OptILLM forces 64000); its `<think>` wrapping of the output
(`use_thinking_tags`) is not reproduced: the answer is the chosen solution as written.

Graph: START -> setup -> explore x agents -> evolve <-> (aggregate | strategize | enhance) x k ->
check -> verify x (solutions x passes) -> judge -> improve x unverified -> check ... -> finalize
-> synthesize? -> END. Controllers (setup, evolve, check, judge) write a plan; its jobs go out
concurrently as `Send` branches.

Lightweight configuration (as OptILLM): when the client's max_tokens (or max_completion_tokens) is at
most 4000 and `lightweight` is not false (true forces it), parameters left at their defaults take:
2 agents, 2 iterations, 1 pass, consensus 1, no RSA, no strategy network. The cost formulas hold
for the parameters in effect (`effective_params`). Calls: explore + aggregations + 2 per agent for
the strategy network + the solutions x (passes + iterations x (1 + passes)) + 1 synthesis;
verification usually stops earlier.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import Field

from optigraph.core.answers import extract_normalized, strip_think
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import candidate_text
from optigraph.core.votes import is_cut, majority
from optigraph.errors import UpstreamError
from optigraph.nodes.aggregate import aggregate_messages
from optigraph.nodes.common import (
    answer_of,
    branch_payload,
    candidates_from,
    generation_params,
    helper_params,
)
from optigraph.nodes.generate import generate_final
from optigraph.nodes.refine import RefineState, refine
from optigraph.nodes.sample import is_usable
from optigraph.nodes.verify import VerifyState, feedback_of, verify

STRATEGY_PROMPT = """Original query: {query}

A solution to the query:
{solution}

In at most five sentences, describe the strategy of this solution: its key idea, the method it \
applies and the step that settles the result. Do not restate the solution."""

PEERS_FEEDBACK = """Other solvers approached the same problem as follows:
{strategies}

Use whatever in their approaches makes your response more correct or complete; keep your own \
reasoning where it is sound."""

LIGHTWEIGHT_MAX_TOKENS = 4000
LIGHTWEIGHT = {
    "num_agents": 2,
    "max_iterations": 2,
    "verification_passes_required": 1,
    "consensus_threshold": 1,
    "enable_aggregation": False,
    "enable_strategy_network": False,
}
IMPROVE_FACTOR = 0.8  # improvements run a little cooler than their author
ENHANCE_FACTOR = 0.9
SYNTHESIS_POOL = 3
STRATEGY_MAX_TOKENS = 512


class MarsParams(ApproachParams):
    num_agents: int = Field(3, ge=1, le=8, description="Agents exploring concurrently.")
    agent_temperatures: tuple[Annotated[float, Field(ge=0.0, le=2.0)], ...] = Field(
        (0.3, 0.6, 1.0), min_length=1, description="Agent i's temperature: item i modulo length."
    )
    enable_aggregation: bool = Field(True, description="Recursive self-aggregation of the population.")
    aggregation_loops: int = Field(3, ge=0, le=8, description="RSA steps.")
    aggregation_groups: int = Field(2, ge=1, le=8, description="Groups aggregated per RSA step.")
    aggregation_size: int = Field(3, ge=2, le=8, description="Solutions per aggregated group.")
    population_size: int = Field(6, ge=1, le=32, description="RSA pool kept (at least num_agents).")
    aggregation_temperature: float = Field(0.7, ge=0.0, le=2.0)
    enable_strategy_network: bool = Field(True, description="Agents rewrite their solutions with peers' strategies.")
    strategy_temperature: float = Field(0.3, ge=0.0, le=2.0)
    verification_passes_required: int = Field(2, ge=1, le=8, description="Checks that must all pass.")
    max_iterations: int = Field(5, ge=0, le=20, description="Improve-and-recheck rounds at most.")
    consensus_threshold: int = Field(2, ge=1, le=32, description="Verified solutions that end the improvement.")
    verify_temperature: float = Field(0.1, ge=0.0, le=2.0)
    verify_max_tokens: int | None = Field(None, ge=1, le=200000, description="Cap per check; null: none.")
    min_votes: int = Field(2, ge=1, le=32, description="Agreeing answers the vote fallback needs.")
    synthesis_temperature: float = Field(0.3, ge=0.0, le=2.0)
    lightweight: bool | None = Field(None, description="null: when the client's max_tokens <= 4000.")


class Solution(TypedDict, total=False):
    id: int
    agent: int | None  # the exploring agent that wrote it (or enhanced it); None for an aggregate
    origin: str  # explore | aggregate | enhance
    text: str
    message: dict[str, Any]
    finish_reason: str | None
    temperature: float  # its author's; improvements run at IMPROVE_FACTOR x this
    version: int  # improvements so far
    verified: bool
    score: float | None  # mean verifier score of its latest checks
    feedback: str  # what its latest failed checks found


def merge_by_id(a: list[Solution] | None, b: list[Solution] | None) -> list[Solution]:
    """Solutions by id: a later record of the same id replaces the earlier one."""
    merged = {s["id"]: s for s in a or []}
    merged.update({s["id"]: s for s in b or []})
    return [merged[k] for k in sorted(merged)]


def add_strategies(a: dict[str, str] | None, b: dict[str, str] | None) -> dict[str, str]:
    return {**(a or {}), **(b or {})}


class MarsState(VerifyState, RefineState, total=False):
    solutions: Annotated[list[Solution], merge_by_id]
    strategies: Annotated[dict[str, str], add_strategies]  # solution id (as text) -> its strategy
    pool: list[int]  # the RSA population, oldest first
    enhanced: list[int]
    step: int  # evolve steps, then verification rounds: tags the work each one sends
    iteration: int
    next_id: int
    plan: list[dict[str, Any]]  # the work the last controller decided: [{"node", ...job}]


def effective_params(params: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The parameters in effect: the lightweight values replace defaults when it applies."""
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    light = params.get("lightweight")
    if light is None:
        light = limit is not None and int(limit) <= LIGHTWEIGHT_MAX_TOKENS
    if not light:
        return dict(params)
    fields = MarsParams.model_fields
    return {**params, **{k: v for k, v in LIGHTWEIGHT.items() if params.get(k) == fields[k].default}}


def by_id(state: MarsState) -> dict[int, Solution]:
    return {s["id"]: s for s in state.get("solutions") or []}


def active(state: MarsState) -> list[Solution]:
    sols = by_id(state)
    return [sols[i] for i in [*(state.get("pool") or []), *(state.get("enhanced") or [])] if i in sols]


def new_solution(branch: dict[str, Any], source: dict[str, Any]) -> Solution:
    """A solution born in `branch` (explore, aggregate or enhance) from a generated candidate."""
    text = source.get("text") or ""
    return {
        "id": branch["id"],
        "agent": branch.get("agent"),
        "origin": branch["node"],
        "text": text,
        "message": source.get("message") or {"role": "assistant", "content": text},
        "finish_reason": source.get("finish_reason"),
        "temperature": branch["temperature"],
        "version": 0,
        "verified": False,
        "score": None,
        "feedback": "",
    }


def route_plan(otherwise: str) -> Callable[[MarsState], Awaitable[list[Send] | str]]:
    """The last controller's plan as concurrent branches (each job names its node); with nothing
    planned, on to `otherwise`."""

    async def route(state: MarsState) -> list[Send] | str:
        plan = state.get("plan") or []
        return [Send(job["node"], branch_payload(state, job)) for job in plan] if plan else otherwise

    return route


# ---- explore and evolve --------------------------------------------------------------------------


async def setup(state: MarsState) -> dict[str, Any]:
    """Fixes the parameters in effect and plans one exploring call per agent."""
    params = effective_params(state.get("params") or {}, state.get("request") or {})
    temps = params["agent_temperatures"]
    plan = [
        {"node": "explore", "id": i, "agent": i, "temperature": temps[i % len(temps)]}
        for i in range(params["num_agents"])
    ]
    return {"params": params, "step": 0, "iteration": 0, "next_id": params["num_agents"], "plan": plan}


async def write_solution(state: MarsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One new solution: an agent answering the client's conversation at its own temperature, or
    (with `members`) an RSA aggregation of a group of solutions."""
    branch = state["branch"]
    members = branch.get("members")
    messages = aggregate_messages(state["messages"], members, "") if members else state["messages"]
    author = f"agent {branch['agent']}" if branch.get("agent") is not None else f"group {branch['id']}"
    who = f"{branch['node']}: {author}"
    params = generation_params(state, temperature=branch["temperature"])
    try:
        completion = await runtime.context.llm.chat(messages, node=branch["node"], **params)
    except UpstreamError as exc:
        return {"notes": [f"{who} failed: {exc.message}"]}
    found = candidates_from(completion)
    if not found or not is_usable(found[0]):
        return {"usage": completion.usage, "notes": [f"{who} came back empty"]}
    return {"solutions": [new_solution(branch, found[0])], "usage": completion.usage}


async def strategize(state: MarsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """A short summary of one explored solution's strategy, for its peers."""
    branch, params = state["branch"], state["params"]
    prompt = STRATEGY_PROMPT.format(query=last_user_text(state["messages"]), solution=branch["text"])
    call = helper_params(
        state,
        temperature=params["strategy_temperature"],
        max_tokens=STRATEGY_MAX_TOKENS,
        reasoning_effort=(state.get("request") or {}).get("reasoning_effort"),
    )
    messages = replace_last_user(state["messages"], prompt)
    try:
        completion = await runtime.context.llm.chat(messages, node="strategize", **call)
    except UpstreamError as exc:
        return {"notes": [f"strategize: solution {branch['id']} failed: {exc.message}"]}
    text = strip_think(completion.text)
    if not text:
        return {"usage": completion.usage, "notes": [f"strategize: solution {branch['id']} came back empty"]}
    return {"strategies": {str(branch["id"]): text}, "usage": completion.usage}


def rsa_groups(pool: Sequence[int], step: int, groups: int, size: int) -> list[list[int]]:
    """Windows over the pool, shifting each step, so every member is aggregated in turn and in
    varied order (deterministic, so a resumed run plans the same work)."""
    k = min(size, len(pool))
    starts = [((step * groups + g) * k) % len(pool) for g in range(groups)]
    return [[pool[(s + j) % len(pool)] for j in range(k)] for s in starts]


async def evolve(state: MarsState) -> dict[str, Any]:
    """Absorbs the last step's work and plans the next: RSA and the strategy network side by side."""
    params, step = state["params"], state.get("step", 0)
    sols = by_id(state)
    next_id = state.get("next_id", 0)
    update: dict[str, Any] = {}
    agents = [s for s in sols.values() if s.get("origin") == "explore"]
    if step == 0:
        if not agents:
            reasons = "; ".join(n for n in state.get("notes") or [] if n.startswith("explore:"))
            raise UpstreamError(f"mars: every agent failed ({reasons or 'no reason recorded'})")
        pool = [s["id"] for s in agents]
    else:
        cap = max(params["population_size"], params["num_agents"])
        fresh = [j["id"] for j in state.get("plan") or [] if j["node"] == "aggregate" and j["id"] in sols]
        pool = [*(state.get("pool") or []), *fresh][-cap:]
        jobs = {j["id"]: j for j in state.get("plan") or [] if j["node"] == "enhance"}
        made = [
            new_solution(jobs[r["id"]], r)
            for r in state.get("refined") or []
            if r.get("round") == step - 1 and r["id"] in jobs
        ]
        update["solutions"] = made
        update["enhanced"] = [*(state.get("enhanced") or []), *(s["id"] for s in made)]
    plan: list[dict[str, Any]] = []
    if params["enable_aggregation"] and step < params["aggregation_loops"]:
        for members in rsa_groups(pool, step, params["aggregation_groups"], params["aggregation_size"]):
            plan.append(
                {
                    "node": "aggregate",
                    "id": next_id,
                    "members": [sols[m] for m in members],
                    "temperature": params["aggregation_temperature"],
                }
            )
            next_id += 1
    if params["enable_strategy_network"] and len(agents) > 1:
        if step == 0:
            plan += [{"node": "strategize", "id": s["id"], "text": candidate_text(s)} for s in agents]
        elif step == 1:
            strategies = state.get("strategies") or {}
            for s in agents:
                peers = [
                    f"- Solver {p['agent'] + 1}: {strategies[str(p['id'])]}"
                    for p in agents
                    if p["id"] != s["id"] and str(p["id"]) in strategies
                ]
                if peers:
                    plan.append(
                        {
                            "node": "enhance",
                            "id": next_id,
                            "agent": s["agent"],
                            "round": step,
                            "temperature": s["temperature"] * ENHANCE_FACTOR,
                            "text": candidate_text(s),
                            "feedback": PEERS_FEEDBACK.format(strategies="\n".join(peers)),
                        }
                    )
                    next_id += 1
    return {**update, "pool": pool, "step": step + 1, "next_id": next_id, "plan": plan}


# ---- verify and improve --------------------------------------------------------------------------


async def check(state: MarsState) -> dict[str, Any]:
    """Absorbs the last improvements and sends every unverified solution to its checks."""
    step = state.get("step", 0)
    sols = by_id(state)
    improved = []
    for r in state.get("refined") or []:
        if r.get("round") == step - 1 and r.get("kind") == "solution" and r["id"] in sols:
            old = sols[r["id"]]
            improved.append(
                {
                    **old,
                    "text": r["text"],
                    "message": r["message"],
                    "version": old.get("version", 0) + 1,
                    "finish_reason": r.get("finish_reason"),
                    "verified": False,
                }
            )
    current = by_id({"solutions": merge_by_id(list(sols.values()), improved)})
    ids = [s["id"] for s in active(state)]
    passes = state["params"]["verification_passes_required"]
    plan = [
        {"node": "verify", "id": i, "text": candidate_text(current[i]), "round": step}
        for i in ids
        if i in current and not current[i].get("verified")
        for _ in range(passes)
    ]
    return {"solutions": improved, "plan": plan, "step": step + 1}


async def judge(state: MarsState) -> dict[str, Any]:
    """Records the round's checks on their solutions and plans improvements if they are needed."""
    params, round_ = state["params"], state.get("step", 1) - 1
    checks = [v for v in state.get("verifications") or [] if v.get("round") == round_]
    sols = by_id(state)
    updated = []
    for ident in dict.fromkeys(v["id"] for v in checks):
        mine = [v for v in checks if v["id"] == ident]
        scores = [v["score"] for v in mine if v.get("score") is not None]
        passed = len(mine) >= params["verification_passes_required"] and all(v.get("verdict") is True for v in mine)
        updated.append(
            {
                **sols[ident],
                "verified": passed,
                "score": sum(scores) / len(scores) if scores else None,
                "feedback": feedback_of(mine),
            }
        )
    current = by_id({"solutions": merge_by_id(list(sols.values()), updated)})
    pool = [current[s["id"]] for s in active(state)]
    verified = sum(1 for s in pool if s.get("verified"))
    unverified = [s for s in pool if not s.get("verified")]
    iteration = state.get("iteration", 0)
    note = f"judge: after {iteration} improvement round(s), {verified} of {len(pool)} solutions verified"
    plan: list[dict[str, Any]] = []
    if verified < params["consensus_threshold"] and unverified and iteration < params["max_iterations"]:
        plan = [
            {
                "node": "improve",
                "id": s["id"],
                "round": round_,
                "text": candidate_text(s),
                "feedback": s.get("feedback") or "",
                "temperature": s["temperature"] * IMPROVE_FACTOR,
            }
            for s in unverified
        ]
        iteration += 1
    return {"solutions": updated, "plan": plan, "iteration": iteration, "notes": [note]}


# ---- final ---------------------------------------------------------------------------------------


def rank(solution: Solution) -> tuple[float, int]:
    value = solution.get("score")
    return (-1.0 if value is None else float(value), -solution["id"])


async def finalize(state: MarsState) -> dict[str, Any]:
    """The best verified solution, else a clear majority answer; else leaves it to `synthesize`."""
    pool = active(state)
    verified = [s for s in pool if s.get("verified")]
    if verified:
        texts = [candidate_text(s) for s in verified]
        vote = majority([extract_normalized(t) for t in texts], texts, cut=[is_cut(s) for s in verified])
        best = max((verified[i] for i in vote.top.members), key=rank)
        return {
            "answers": [answer_of(best)],
            "notes": [f"finalize: verified solution {best['id']} ({len(verified)} of {len(pool)} verified)"],
        }
    texts = [candidate_text(s) for s in pool]
    vote = majority([extract_normalized(t) for t in texts], texts, cut=[is_cut(s) for s in pool])
    answered = [g for g in vote.groups if g.extracted]
    top = max(answered, key=lambda g: (len(g.members), -g.members[0]), default=None)
    if top is not None and len(top.members) >= state["params"]["min_votes"]:
        best = max((pool[i] for i in top.members), key=rank)
        return {
            "answers": [answer_of(best)],
            "notes": [f"finalize: none verified; {len(top.members)} of {len(pool)} agree on {top.key[:40]!r}"],
        }
    return {"notes": ["finalize: none verified and no majority; synthesizing"]}


async def route_final(state: MarsState) -> str:
    return END if state.get("answers") else "synthesize"


async def synthesize(state: MarsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """One answer written from the best-scored solutions; streams to the client."""
    top = sorted(active(state), key=rank, reverse=True)[:SYNTHESIS_POOL]
    messages = aggregate_messages(state["messages"], top, "")
    temperature = state["params"]["synthesis_temperature"]
    completion = await generate_final(
        state, runtime, messages, node="synthesize", **generation_params(state, temperature=temperature)
    )
    return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}


def build() -> StateGraph:
    graph = StateGraph(MarsState, context_schema=RunContext)
    for name, node in (
        ("setup", setup),
        ("explore", write_solution),
        ("evolve", evolve),
        ("aggregate", write_solution),
        ("strategize", strategize),
        ("enhance", refine),
        ("check", check),
        ("verify", verify),
        ("judge", judge),
        ("improve", refine),
        ("finalize", finalize),
        ("synthesize", synthesize),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "setup")
    graph.add_conditional_edges("setup", route_plan("check"), ["explore", "check"])
    for node in ("explore", "aggregate", "strategize", "enhance"):
        graph.add_edge(node, "evolve")
    graph.add_conditional_edges("evolve", route_plan("check"), ["aggregate", "strategize", "enhance", "check"])
    graph.add_conditional_edges("check", route_plan("judge"), ["verify", "judge"])
    graph.add_edge("verify", "judge")
    graph.add_conditional_edges("judge", route_plan("finalize"), ["improve", "finalize"])
    graph.add_edge("improve", "check")
    graph.add_conditional_edges("finalize", route_final, ["synthesize", END])
    graph.add_edge("synthesize", END)
    return graph


_SOLUTIONS = (
    "(min(num_agents + enable_aggregation * aggregation_loops * aggregation_groups, "
    "max(population_size, num_agents)) + enable_strategy_network * num_agents)"
)

SPEC = ApproachSpec(
    name="mars",
    description="Multi-agent reasoning: agents at diverse temperatures, recursive self-aggregation, "
    "repeated verification with improvement from the reports, verified answer or vote.",
    build=build,
    params=MarsParams,
    papers=("arXiv:2507.15855", "arXiv:2509.26626"),
    calls=(
        "num_agents + enable_aggregation * aggregation_loops * aggregation_groups"
        " + 2 * enable_strategy_network * num_agents"
        f" + {_SOLUTIONS} * (verification_passes_required"
        " + max_iterations * (1 + verification_passes_required)) + 1"
    ),
    rounds="3 + max(enable_aggregation * aggregation_loops, 2 * enable_strategy_network) + 2 * max_iterations",
    streams_final=True,
)
