"""`cepo`: Cerebras planning and optimization (Cerebras blog, "CePO: Empowering Llama with
Reasoning using Test-Time Compute", 2024; no paper). Best of n over plan-execute-review chains:

For each of `bestofn_n` chains, concurrently:
  1. up to `planning_m` attempts: write a step-by-step plan with a confidence per step and no answer
     (the question stated twice, as in re-reading); then
  2. carry the plan out in the same conversation. Attempts cut off by the length limit (or failed)
     are rejected. Attempts stop as soon as `planning_n` are accepted, as in the original; they run
     in waves: first `planning_n` at once, then, while some were rejected and attempts are left, as
     many more as are still missing. So a chain makes exactly the attempts the original's sequential
     loop would, concurrently where it can.
  3. Review the accepted solutions, resolve their inconsistencies, write one final solution.
  4. Answer the question from that solution (this is the chain's candidate).
Then pick a candidate by `bestofn_rating_type`: `absolute` (the model rates each 0-10, `nodes/rate`),
`pairwise` (every ordered pair judged, most wins; `nodes/compare`) or `majority` (vote over the
extracted answers, no call).

Each step runs at its own temperature and length (`planning_temperature_step1..4`,
`planning_max_tokens_step1..4`); each rating is asked once. When no attempt of a chain completes,
its truncated solutions are reviewed instead; when there are none either, the review step solves
the question directly; both are noted. A chain whose calls fail drops out; the run fails only when
no chain answers.

Graph: START -> plan x (n * planning_n) -> execute -> tally -> [plan x missing -> execute -> tally]...
-> keep -> refine x n -> answer x n -> collect -> rate x n | compare_pair x n(n-1) | vote -> select.
Expected calls (every attempt accepted): n * (2 * planning_n + 2) + `rating_calls`, in 5 rounds
(4 without ratings); `rating_calls` is derived from the parameters (n absolute, n(n-1) pairwise,
0 majority, 0 with one chain). At most (every attempt rejected): n * (2 * planning_m + 2) +
`rating_calls`, in 2 * (planning_m - planning_n + 1) + 2 rounds (+1 with ratings). With the
defaults: 3 * 8 + 3 = 27 calls in 5 rounds expected, 45 calls in 11 rounds at most (OptILLM makes
up to 48, asking each absolute rating twice).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import Field, computed_field

from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import sorted_candidates
from optigraph.errors import UpstreamError
from optigraph.nodes.common import (
    branch_payload,
    candidates_from,
    generation_params,
    helper_params,
)
from optigraph.nodes.compare import (
    PairwiseState,
    compare_pair,
    pairs_each,
    select_by_wins,
)
from optigraph.nodes.rate import rate
from optigraph.nodes.select import select
from optigraph.nodes.vote import vote

PLAN_PROMPT = """Write a concise step-by-step plan for solving the question below. Do not solve it \
and do not give the final answer. For each step, state how confident you are (low, medium or high) \
that the step is right and that you can carry it out without mistakes.

Question:
{question}

Read the question again:
{question}"""

EXECUTE_PROMPT = """Now carry out your plan step by step and solve the question. Where a step you \
were unsure of turns out to be wrong, correct it and go on. Show your work."""

SOLUTION_BLOCK = "Solution {number}:\n{text}"

REFINE_PROMPT = """Question:
{question}

Here are {count} attempted solutions to the question, each following its own plan:

{solutions}

Review them carefully. Where they disagree, work out which is right and why; where one contains an \
error, correct it. Then write one final, complete solution to the question that resolves every \
inconsistency."""

REFINE_DIRECT_PROMPT = """Question:
{question}

Solve the question carefully, step by step, checking each step, and write a complete solution."""

ANSWER_PROMPT = """Question:
{question}

A reviewed solution to the question:
{solution}

Using this solution, answer the question. Follow any instructions the question gives about the \
form of the answer."""


class CepoParams(ApproachParams):
    bestofn_n: int = Field(3, ge=1, le=8, description="Plan-execute-review chains; the best answer is returned.")
    bestofn_temperature: float = Field(0.1, ge=0.0, le=2.0, description="Temperature of the rating calls.")
    bestofn_max_tokens: int = Field(4096, ge=1, le=131072, description="Length cap of the rating calls.")
    bestofn_rating_type: Literal["absolute", "pairwise", "majority"] = Field(
        "absolute", description="absolute: rate each 0-10; pairwise: judge every ordered pair; majority: vote."
    )
    planning_n: int = Field(3, ge=1, le=16, description="Accepted attempts per chain after which attempts stop.")
    planning_m: int = Field(6, ge=1, le=16, description="Most plan-and-execute attempts per chain.")
    planning_temperature_step1: float = Field(0.55, ge=0.0, le=2.0, description="Temperature of the plans.")
    planning_temperature_step2: float = Field(0.25, ge=0.0, le=2.0, description="Temperature of the executions.")
    planning_temperature_step3: float = Field(0.1, ge=0.0, le=2.0, description="Temperature of the review.")
    planning_temperature_step4: float = Field(0.0, ge=0.0, le=2.0, description="Temperature of the final answer.")
    planning_max_tokens_step1: int = Field(4096, ge=1, le=131072, description="Length cap of the plans.")
    planning_max_tokens_step2: int = Field(4096, ge=1, le=131072, description="Length cap of the executions.")
    planning_max_tokens_step3: int = Field(4096, ge=1, le=131072, description="Length cap of the review.")
    planning_max_tokens_step4: int = Field(4096, ge=1, le=131072, description="Length cap of the final answer.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rating_calls(self) -> int:
        """Upstream calls the selection makes on the full path (for the cost formula)."""
        n = self.bestofn_n
        if n < 2:
            return 0
        return {"absolute": n, "pairwise": n * (n - 1), "majority": 0}[self.bestofn_rating_type]


class CepoState(PairwiseState, total=False):
    plans: Annotated[list[dict[str, Any]], operator.add]  # {chain, attempt, text, status}
    executions: Annotated[list[dict[str, Any]], operator.add]  # {chain, attempt, text, status}
    kept: list[dict[str, Any]]  # {chain, solutions}: what each chain's review reads
    solutions: Annotated[list[dict[str, Any]], operator.add]  # {chain, text}: the reviewed solution (None: failed)


def _payload(state: CepoState, **branch: Any) -> dict[str, Any]:
    return branch_payload(state, branch)


def _step(state: CepoState, step: int) -> dict[str, Any]:
    """An internal call's parameters at this step's own temperature and length."""
    p = state["params"]
    return helper_params(
        state, temperature=p[f"planning_temperature_step{step}"], max_tokens=p[f"planning_max_tokens_step{step}"]
    )


def _status(completion: Any) -> str:
    if not completion.text.strip():
        return "empty"
    return "truncated" if completion.finish_reasons[0] == "length" else "ok"


def plan_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return replace_last_user(messages, PLAN_PROMPT.format(question=last_user_text(messages)))


# A conditional edge after a `Send` task sees that task's input and its own writes only, so each
# plan routes to its own execution and each review to its own answer. Fan-ins (`keep`, `collect`)
# are plain nodes reached by static edges: they run once, after every branch of the step.

# ---- steps 1 and 2: plan, then execute, in waves until planning_n are accepted -------------------


def wave(state: CepoState) -> list[Send]:
    """The next wave of attempts: per chain, as many as it still misses accepted ones (at first
    `planning_n`), within `planning_m` attempts in all. Empty when every chain is done."""
    p = state["params"]
    started: dict[int, int] = {}
    for r in state.get("plans") or []:
        started[r["chain"]] = started.get(r["chain"], 0) + 1
    accepted: dict[int, int] = {}
    for r in state.get("executions") or []:
        if r["status"] == "ok":
            accepted[r["chain"]] = accepted.get(r["chain"], 0) + 1
    sends = []
    for chain in range(p["bestofn_n"]):
        first = started.get(chain, 0)
        more = min(p["planning_n"] - accepted.get(chain, 0), p["planning_m"] - first)
        sends += [Send("plan", _payload(state, chain=chain, attempt=a)) for a in range(first, first + max(0, more))]
    return sends


async def tally(state: CepoState) -> dict[str, Any]:
    """Fan-in after each wave (no call); the edge after it starts the next wave or moves on."""
    return {}


def next_wave_or_keep(state: CepoState) -> list[Send] | str:
    return wave(state) or "keep"


async def plan(state: CepoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    chain, attempt = state["branch"]["chain"], state["branch"]["attempt"]
    record = {"chain": chain, "attempt": attempt, "text": "", "status": "failed"}
    try:
        completion = await runtime.context.llm.chat(plan_messages(state["messages"]), node="plan", **_step(state, 1))
    except UpstreamError as exc:
        return {"plans": [record], "notes": [f"plan: chain {chain} attempt {attempt} failed: {exc.message}"]}
    record.update(text=completion.text, status=_status(completion))
    notes = [] if record["status"] == "ok" else [f"plan: chain {chain} attempt {attempt} rejected ({record['status']})"]
    return {"plans": [record], "usage": completion.usage, "notes": notes}


def to_execute(state: CepoState) -> Send:
    return Send("execute", _payload(state, **state["plans"][-1]))


async def execute(state: CepoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Carries out the plan in the plan's conversation; a rejected plan is not executed."""
    b = state["branch"]
    record = {"chain": b["chain"], "attempt": b["attempt"], "text": "", "status": "no plan"}
    if b["status"] != "ok":
        return {"executions": [record]}
    messages = [
        *plan_messages(state["messages"]),
        {"role": "assistant", "content": b["text"]},
        {"role": "user", "content": EXECUTE_PROMPT},
    ]
    try:
        completion = await runtime.context.llm.chat(messages, node="execute", **_step(state, 2))
    except UpstreamError as exc:
        record["status"] = "failed"
        return {
            "executions": [record],
            "notes": [f"execute: chain {b['chain']} attempt {b['attempt']} failed: {exc.message}"],
        }
    record.update(text=completion.text, status=_status(completion))
    notes = (
        []
        if record["status"] == "ok"
        else [f"execute: chain {b['chain']} attempt {b['attempt']} rejected ({record['status']})"]
    )
    return {"executions": [record], "usage": completion.usage, "notes": notes}


def kept_solutions(executions: list[dict[str, Any]], planning_n: int) -> tuple[list[str], str | None]:
    """The first `planning_n` completed solutions (attempts stop there, so all of them); with none,
    the truncated ones (and a note why)."""
    done = [r["text"] for r in executions if r["status"] == "ok"]
    if done:
        return done[:planning_n], None
    cut = [r["text"] for r in executions if r["status"] == "truncated"]
    if cut:
        return cut[:planning_n], "no attempt completed; reviewing truncated solutions"
    return [], "no attempt produced a solution; solving directly"


async def keep(state: CepoState) -> dict[str, Any]:
    """Fan-in: per chain, the solutions its review will read (no call)."""
    p = state["params"]
    kept, notes = [], []
    for chain in range(p["bestofn_n"]):
        runs = sorted((r for r in state.get("executions") or [] if r["chain"] == chain), key=lambda r: r["attempt"])
        solutions, why = kept_solutions(runs, p["planning_n"])
        kept.append({"chain": chain, "solutions": solutions})
        notes.append(f"keep: chain {chain}: {len(solutions)} solutions" + (f" ({why})" if why else ""))
    return {"kept": kept, "notes": notes}


# ---- steps 3 and 4: review the kept solutions, then answer, one per chain ------------------------


def refine_each(state: CepoState) -> list[Send]:
    return [Send("refine", _payload(state, **k)) for k in state["kept"]]


async def refine(state: CepoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    chain, solutions = state["branch"]["chain"], state["branch"]["solutions"]
    question = last_user_text(state["messages"])
    if solutions:
        blocks = "\n\n".join(SOLUTION_BLOCK.format(number=i + 1, text=t) for i, t in enumerate(solutions))
        prompt = REFINE_PROMPT.format(question=question, count=len(solutions), solutions=blocks)
    else:
        prompt = REFINE_DIRECT_PROMPT.format(question=question)
    record: dict[str, Any] = {"chain": chain, "text": None}
    try:
        completion = await runtime.context.llm.chat(
            replace_last_user(state["messages"], prompt), node="refine", **_step(state, 3)
        )
    except UpstreamError as exc:
        return {"solutions": [record], "notes": [f"refine: chain {chain} failed, it drops out: {exc.message}"]}
    if not completion.text.strip():
        return {
            "solutions": [record],
            "usage": completion.usage,
            "notes": [f"refine: chain {chain} came back empty, it drops out"],
        }
    record["text"] = completion.text
    return {"solutions": [record], "usage": completion.usage}


def to_answer(state: CepoState) -> Send:
    return Send("answer", _payload(state, **state["solutions"][-1]))


async def answer(state: CepoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """The chain's candidate, at the client's own generation settings (tools, format) with step 4's
    temperature and length. A chain without a reviewed solution has dropped out."""
    b = state["branch"]
    if b["text"] is None:
        return {}
    p = state["params"]
    prompt = ANSWER_PROMPT.format(question=last_user_text(state["messages"]), solution=b["text"])
    call = generation_params(
        state, temperature=p["planning_temperature_step4"], max_tokens=p["planning_max_tokens_step4"]
    )
    try:
        completion = await runtime.context.llm.chat(replace_last_user(state["messages"], prompt), node="answer", **call)
    except UpstreamError as exc:
        return {"notes": [f"answer: chain {b['chain']} failed, it drops out: {exc.message}"]}
    return {"candidates": candidates_from(completion, start=b["chain"])[:1], "usage": completion.usage}


async def collect(state: CepoState) -> dict[str, Any]:
    """Fan-in of the chains' answers; the run fails only when no chain answered."""
    answered = len(state.get("candidates") or [])
    if not answered:
        last = (state.get("notes") or ["no chain ran"])[-1]
        raise UpstreamError(f"cepo: no chain produced an answer ({last})")
    return {"notes": [f"collect: {answered} of {state['params']['bestofn_n']} chains answered"]}


# ---- selection ---------------------------------------------------------------------------------


def rate_or_compare(state: CepoState) -> list[Send] | str:
    candidates = sorted_candidates(state)
    p = state["params"]
    if len(candidates) == 1:
        return "select"
    kind = p["bestofn_rating_type"]
    if kind == "majority":
        return "vote"
    if kind == "pairwise":
        return pairs_each(
            state,
            params={
                "comparison_temperature": p["bestofn_temperature"],
                "comparison_max_tokens": p["bestofn_max_tokens"],
            },
        )
    rating = {"rating_temperature": p["bestofn_temperature"], "rating_max_tokens": p["bestofn_max_tokens"]}
    return [
        Send("rate", branch_payload(state, {"index": c["index"], "candidate": c}, params=rating)) for c in candidates
    ]


def build() -> StateGraph:
    graph = StateGraph(CepoState, context_schema=RunContext)
    for name, node in (
        ("plan", plan),
        ("execute", execute),
        ("tally", tally),
        ("keep", keep),
        ("refine", refine),
        ("answer", answer),
        ("collect", collect),
        ("rate", rate),
        ("select", select),
        ("compare_pair", compare_pair),
        ("select_by_wins", select_by_wins),
        ("vote", vote),
    ):
        graph.add_node(name, node)
    graph.add_conditional_edges(START, wave, ["plan"])
    graph.add_conditional_edges("plan", to_execute, ["execute"])
    graph.add_edge("execute", "tally")
    graph.add_conditional_edges("tally", next_wave_or_keep, ["plan", "keep"])
    graph.add_conditional_edges("keep", refine_each, ["refine"])
    graph.add_conditional_edges("refine", to_answer, ["answer"])
    graph.add_edge("answer", "collect")
    graph.add_conditional_edges("collect", rate_or_compare, ["rate", "compare_pair", "vote", "select"])
    graph.add_edge("rate", "select")
    graph.add_edge("compare_pair", "select_by_wins")
    for last in ("select", "select_by_wins", "vote"):
        graph.add_edge(last, END)
    return graph


SPEC = ApproachSpec(
    name="cepo",
    description="CePO: best of n over plan, execute, review and answer chains, selected by rating, "
    "pairwise comparison or vote.",
    build=build,
    params=CepoParams,
    papers=(),
    calls="bestofn_n * (2 * planning_m + 2) + rating_calls",
    rounds="2 * max(1, planning_m - planning_n + 1) + 2 + min(1, rating_calls)",
    expected_calls="bestofn_n * (2 * min(planning_n, planning_m) + 2) + rating_calls",
    streams_final=False,
)
