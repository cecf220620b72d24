"""`rstar`: "Mutual Reasoning Makes Smaller LLMs Stronger Problem-Solvers" (Qi et al., 2024, arXiv
2408.06195). The model generates reasoning trajectories by Monte Carlo tree search over five
human-like actions: a one-step thought, all the remaining steps, a sub-question with its answer,
re-answering the last sub-question, and rephrasing the question with all its conditions (at the
root only). A discriminator (the paper uses a second small model; here the same model at a low
temperature) then checks each trajectory for mutual consistency: it is given a prefix of the trajectory, cut at a random point between 20% and 80% of its lines, completes it,
and the trajectory counts as consistent when both reach the same final answer (answers compared
after extraction and normalisation, so "1,000", "1000.0" and "$1000" agree, and negative, decimal
or symbolic answers are answers like any other).

A rollout selects a node by UCT (c = `c`) with progressive widening, expands it with an action not
yet tried there (at random), then continues with random actions until the trajectory commits to a
final answer or reaches `max_depth` steps (the last step always finishes the solution); every step
stays in the tree, so later rollouts can branch from it. A trajectory's reward is the share of all
trajectories found so far that reach its answer (answer confidence, as in the paper), 0 without an
answer, backed up along its path. Rollouts run in waves of `rollout_batch`, concurrently within a
wave (virtual losses spread a wave over the tree); UCT sees each wave's rewards before choosing
the next, which is what lets the search act at all. The answer is the trajectory, among the
consistent ones, of highest value (mean value along its path), then most frequent answer; it is
returned whole, reasoning and final answer. The client's system prompt and earlier turns are kept
in every call, with the solving instructions appended to the system prompt.

Failures: a step that fails or comes back empty ends its rollout there (noted); if every step of
the first wave fails, the run ends with the upstream error. A failed consistency check leaves the
trajectory unconfirmed (used only when none is confirmed).

Graph: START -> select -> expand -> simulate -> evaluate -> backpropagate -> select ... (until
`num_rollouts` have run) -> discriminate -> answer -> END.
Cost: at most `max_depth` step calls per rollout plus one consistency check per trajectory (a
rollout that starts below the root, or finishes early, costs less); dependent rounds: `max_depth`
per wave of `rollout_batch` rollouts, plus 1 for the concurrent checks.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from functools import reduce
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import AliasChoices, Field

from optigraph.core.answers import extract_normalized, strip_think
from optigraph.core.context import RunContext
from optigraph.core.messages import last_user_text, replace_last_user
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState
from optigraph.core.usage import Usage, add_usage, empty_usage
from optigraph.errors import UpstreamError
from optigraph.nodes.common import helper_params, text_answer
from optigraph.nodes.sample import param_or_client
from optigraph.nodes.search import Expandable, Tree, TreeNode, gather_survivors
from optigraph.nodes.transform import with_system_instructions

ONE_STEP, REMAINING, SUB_QUESTION, RE_ANSWER, REPHRASE = (
    "one_step",
    "remaining",
    "sub_question",
    "re_answer",
    "rephrase",
)

SOLVER_INSTRUCTIONS = """Solve problems step by step. When you reach the final answer, state it on its \
own line as: The final answer is <answer>."""

STEP_PROMPT = """Problem: {question}

{progress}

{instruction}"""

PROGRESS = "Solution so far:\n{steps}"
NO_PROGRESS = "No steps have been taken yet."

ACTION_PROMPTS = {
    ONE_STEP: "Write only the next single step of the solution (a short piece of reasoning or one "
    "calculation). If this step reaches the answer, end with: The final answer is <answer>.",
    REMAINING: "Complete the solution: write all the remaining steps, then end with: The final answer is <answer>.",
    SUB_QUESTION: "Pose the next sub-question whose answer brings the solution closer, and answer it, in "
    "this form:\nSub-question: <the sub-question>\nAnswer: <its answer, with brief reasoning>\n"
    "If this answers the whole problem, end with: The final answer is <answer>.",
    RE_ANSWER: "Answer the last sub-question again, carefully and step by step, correcting its previous "
    "answer if it was wrong, in this form:\nAnswer: <the answer, with reasoning>\n"
    "If this answers the whole problem, end with: The final answer is <answer>.",
    REPHRASE: "Rephrase the problem: list every condition it states, one per line, then state exactly what "
    "is asked. Do not solve it yet.",
}

STEP_HEADINGS = {REPHRASE: "Restating the problem:\n", RE_ANSWER: "Checking the last sub-question again:\n"}

CHECK_PROMPT = """Problem: {question}

Here is the beginning of a solution:
{prefix}

Continue the solution from where it stops, step by step, without starting over, and end with: The \
final answer is <answer>."""

CHECK_PROMPT_FROM_SCRATCH = """Problem: {question}

Solve the problem step by step and end with: The final answer is <answer>."""

DEFAULT_TEMPERATURE = 0.8
DEFAULT_CHECK_TEMPERATURE = 0.2
TRUNCATION = (0.2, 0.8)  # the discriminator's prefix: this share of the trajectory's lines

_MARKER = re.compile(r"final\s+answer|\\boxed\s*\{", re.IGNORECASE)


class RstarParams(ApproachParams):
    max_depth: int = Field(
        3,
        ge=1,
        le=10,
        validation_alias=AliasChoices("max_depth", "rstar_max_depth"),
        description="Most reasoning steps in a trajectory. Also `rstar_max_depth`.",
    )
    num_rollouts: int = Field(
        5,
        ge=1,
        le=64,
        validation_alias=AliasChoices("num_rollouts", "rstar_num_rollouts"),
        description="MCTS rollouts (each ends in at most one trajectory). Also `rstar_num_rollouts`.",
    )
    c: float = Field(
        1.4,
        ge=0.0,
        le=10.0,
        validation_alias=AliasChoices("c", "rstar_c"),
        description="UCT exploration constant. Also `rstar_c`.",
    )
    rollout_batch: int = Field(
        2, ge=1, le=64, description="Rollouts run concurrently per wave; UCT acts between waves."
    )
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE, "Temperature of reasoning steps")
    step_max_tokens: int | None = Field(
        None, ge=1, le=32768, description="Token cap per step; default: the client's max_tokens."
    )
    check_temperature: float = Field(
        DEFAULT_CHECK_TEMPERATURE, ge=0.0, le=2.0, description="Temperature of the discriminator's completions."
    )


class RstarState(ApproachState, total=False):
    tree: dict[str, Any]  # search.Tree.to_state(); node data: action, text, answer, pending, failed, reward
    rollouts: int  # rollouts started
    frontier: list[int]  # this wave's newly selected nodes, one per rollout
    ends: list[int | None]  # where each rollout of the wave ended (None: its first step failed)
    checks: dict[str, dict[str, Any]]  # terminal node id -> discriminator's answer and verdict


# ---- answers and trajectories ---------------------------------------------------------------------


def final_answer(text: str) -> str | None:
    """The normalised answer a text commits to with "final answer" or `\\boxed{}`; None otherwise."""
    body = strip_think(text)
    marks = list(_MARKER.finditer(body))
    return extract_normalized(body[marks[-1].start() :]) if marks else None


def step_text(node: TreeNode) -> str:
    return STEP_HEADINGS.get(node["data"].get("action", ""), "") + node["data"].get("text", "")


def trajectory_text(tree: Tree, node_id: int) -> str:
    """The steps from the root to the node, as one response."""
    return "\n\n".join(step_text(n) for n in tree.path(node_id)[1:])


def allowed_actions(node: TreeNode, max_depth: int) -> list[str]:
    """Actions from a node: the last allowed step must finish; re-answer follows a sub-question;
    rephrasing is for the original question only."""
    if node["depth"] + 1 >= max_depth:
        return [REMAINING]
    actions = [ONE_STEP, REMAINING, SUB_QUESTION]
    if node["data"].get("action") == SUB_QUESTION:
        actions.append(RE_ANSWER)
    if node["depth"] == 0:
        actions.append(REPHRASE)
    return actions


def expandable(max_depth: int) -> Expandable:
    """Whether a node can get another step: not final, not failed or pending, under the depth limit."""

    def check(node: TreeNode) -> bool:
        data = node["data"]
        return not node["terminal"] and not data.get("pending") and not data.get("failed") and node["depth"] < max_depth

    return check


def path_value(tree: Tree, node_id: int) -> float:
    """Mean of the node means along the trajectory (the root excluded); 0 when none was visited."""
    means = [m for m in (tree.mean(n["id"]) for n in tree.path(node_id)[1:]) if m is not None]
    return sum(means) / len(means) if means else 0.0


def choose(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The final trajectory: among consistent ones (else unchecked, else all), highest value, then
    most frequent answer (over all candidates), then earliest. Each candidate has `node`, `answer`,
    `value`, `consistent` (True, False, or None when unchecked). Returns it and how it was chosen."""
    if not candidates:
        raise ValueError("no trajectories to choose from")
    pools = (
        ("consistent", [c for c in candidates if c["consistent"] is True]),
        ("unchecked", [c for c in candidates if c["consistent"] is None]),
        ("all, none consistent", list(candidates)),
    )
    how, pool = next((name, p) for name, p in pools if p)
    frequency = Counter(c["answer"] for c in candidates)
    best = max(pool, key=lambda c: (round(c["value"], 9), frequency[c["answer"]], -c["node"]))
    return best, how


# ---- calls ----------------------------------------------------------------------------------------


def _params(state: RstarState) -> dict[str, Any]:
    return state.get("params") or {}


def _seed(state: RstarState) -> int:
    """Seeds the run's random choices: the client's seed, else the question (reproducible runs)."""
    seed = (state.get("request") or {}).get("seed")
    return int(seed) if seed is not None else zlib.crc32(last_user_text(state["messages"]).encode())


def _rng(state: RstarState, *key: object) -> random.Random:
    return random.Random(":".join(str(k) for k in (_seed(state), *key)))


def step_messages(state: RstarState, tree: Tree, parent: int, action: str) -> list[dict[str, Any]]:
    steps = trajectory_text(tree, parent)
    progress = PROGRESS.format(steps=steps) if steps else NO_PROGRESS
    prompt = STEP_PROMPT.format(
        question=last_user_text(state["messages"]), progress=progress, instruction=ACTION_PROMPTS[action]
    )
    return with_system_instructions(replace_last_user(state["messages"], prompt), SOLVER_INSTRUCTIONS)


async def _generate(state: RstarState, runtime: Runtime[RunContext], tree: Tree, node_id: int) -> Usage:
    """Generates the step of a pending node (its parent's trajectory plus its action) and fills it in."""
    node = tree[node_id]
    action = node["data"]["action"]
    params = _params(state)
    call = helper_params(
        state,
        temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE),
        max_tokens=params.get("step_max_tokens") or (state.get("request") or {}).get("max_tokens"),
    )
    messages = step_messages(state, tree, node["parent"], action)
    completion = await runtime.context.llm.chat(messages, node=f"step:{action}", **call)
    text = strip_think(completion.text)
    if not text:
        raise UpstreamError(f"the {action} step came back empty")
    answer = None if action == REPHRASE else final_answer(text)
    if action == REMAINING and answer is None:
        answer = extract_normalized(text)
    node["data"].update(text=text, answer=answer, pending=False)
    node["terminal"] = action == REMAINING or answer is not None
    return completion.usage


def _fail(tree: Tree, node_id: int) -> None:
    tree[node_id]["terminal"] = True
    tree[node_id]["data"].update(pending=False, failed=True)


async def _continue(
    state: RstarState, runtime: Runtime[RunContext], tree: Tree, start: int, usage: list[Usage], notes: list[str]
) -> int:
    """The rest of a rollout: random actions from `start` until a final answer or the depth limit.
    Returns the node it ended at; a failed step ends it early at the last good node."""
    max_depth = int(_params(state).get("max_depth", 3))
    current = start
    while not tree[current]["terminal"] and tree[current]["depth"] < max_depth:
        action = _rng(state, "rollout", start, tree[current]["depth"]).choice(allowed_actions(tree[current], max_depth))
        child = tree.add_child(current, {"action": action, "pending": True})
        try:
            usage.append(await _generate(state, runtime, tree, child))
        except UpstreamError as exc:
            _fail(tree, child)
            notes.append(f"simulate: a {action} step after node {current} failed, rollout ends there: {exc.message}")
            return current
        current = child
    return current


# ---- graph nodes ----------------------------------------------------------------------------------


async def select(state: RstarState) -> dict[str, Any]:
    """Picks the next wave's nodes by UCT with progressive widening (virtual losses keep the wave's
    selections apart) and an action for each, not yet tried there when one is left."""
    params = _params(state)
    max_depth = int(params.get("max_depth", 3))
    tree = Tree.from_state(state.get("tree"), {"action": "question"})
    done = state.get("rollouts") or 0
    frontier: list[int] = []
    for _ in range(min(int(params.get("rollout_batch", 2)), int(params.get("num_rollouts", 5)) - done)):
        leaf = tree.select(float(params.get("c", 1.4)), expandable=expandable(max_depth), widening=True)
        if leaf is None:
            break
        allowed = allowed_actions(tree[leaf], max_depth)
        tried = {ch["data"].get("action") for ch in tree.children(leaf)}
        untried = [a for a in allowed if a not in tried]
        action = _rng(state, "expand", leaf, len(tree[leaf]["children"])).choice(untried or allowed)
        child = tree.add_child(leaf, {"action": action, "pending": True})
        tree.add_virtual_loss(child)
        frontier.append(child)
    return {"tree": tree.to_state(), "frontier": frontier, "ends": [], "rollouts": done + len(frontier)}


async def expand(state: RstarState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Generates the first step of every rollout of the wave, concurrently."""
    tree = Tree.from_state(state["tree"])
    frontier = state["frontier"]
    results = await gather_survivors(_generate(state, runtime, tree, i) for i in frontier)
    usage: list[Usage] = []
    notes: list[str] = []
    for node_id, result in zip(frontier, results):
        if isinstance(result, UpstreamError):
            _fail(tree, node_id)
            notes.append(
                f"expand: the {tree[node_id]['data']['action']} step of node {node_id} failed: {result.message}"
            )
        else:
            usage.append(result)
    if not usage and not any(n["data"].get("text") for n in tree.nodes):
        first = next(r for r in results if isinstance(r, UpstreamError))
        raise UpstreamError(f"every reasoning step failed: {first.message}", upstream_status=first.upstream_status)
    return {"tree": tree.to_state(), "notes": notes, "usage": reduce(add_usage, usage, empty_usage())}


async def simulate(state: RstarState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Finishes every rollout of the wave with random actions, the rollouts concurrently."""
    tree = Tree.from_state(state["tree"])
    frontier = state["frontier"]
    usage: list[Usage] = []
    notes: list[str] = []
    live = [i for i in frontier if not tree[i]["data"].get("failed")]
    ends = await gather_survivors(_continue(state, runtime, tree, i, usage, notes) for i in live)
    by_start = dict(zip(live, ends))
    return {
        "tree": tree.to_state(),
        "ends": [by_start.get(i) for i in frontier],
        "notes": notes,
        "usage": reduce(add_usage, usage, empty_usage()),
    }


async def evaluate(state: RstarState) -> dict[str, Any]:
    """Rewards each finished trajectory with its answer's share among all trajectories so far (0
    without an answer); a rollout that stopped before finishing gets no reward."""
    tree = Tree.from_state(state["tree"])
    answers = [n["data"].get("answer") for n in tree.terminals() if not n["data"].get("failed")]
    counts = Counter(a for a in answers if a is not None)
    total = sum(counts.values())
    for end in state.get("ends") or []:
        if end is None or not tree[end]["terminal"]:
            continue
        answer = tree[end]["data"].get("answer")
        tree[end]["data"]["reward"] = counts[answer] / total if answer is not None and total else 0.0
    return {"tree": tree.to_state()}


async def backpropagate(state: RstarState) -> dict[str, Any]:
    """Removes the wave's virtual losses and backs each reward up its trajectory."""
    tree = Tree.from_state(state["tree"])
    for node_id in state.get("frontier") or []:
        tree.revert_virtual_loss(node_id)
    for end in state.get("ends") or []:
        if end is not None and tree[end]["data"].get("reward") is not None:
            tree.backpropagate(end, float(tree[end]["data"]["reward"]))
    return {"tree": tree.to_state()}


def _prefix(state: RstarState, tree: Tree, node_id: int) -> str:
    lines = [line for line in trajectory_text(tree, node_id).splitlines() if line.strip() and not _MARKER.search(line)]
    keep = int(len(lines) * _rng(state, "check", node_id).uniform(*TRUNCATION))
    return "\n".join(lines[:keep])


async def _check(state: RstarState, runtime: Runtime[RunContext], tree: Tree, node_id: int) -> tuple[str | None, Usage]:
    question = last_user_text(state["messages"])
    prefix = _prefix(state, tree, node_id)
    prompt = (
        CHECK_PROMPT.format(question=question, prefix=prefix)
        if prefix
        else CHECK_PROMPT_FROM_SCRATCH.format(question=question)
    )
    messages = with_system_instructions(replace_last_user(state["messages"], prompt), SOLVER_INSTRUCTIONS)
    call = helper_params(
        state,
        temperature=_params(state).get("check_temperature", DEFAULT_CHECK_TEMPERATURE),
        max_tokens=(state.get("request") or {}).get("max_tokens"),
    )
    completion = await runtime.context.llm.chat(messages, node="discriminate", **call)
    return final_answer(completion.text) or extract_normalized(completion.text), completion.usage


def _trajectories(tree: Tree) -> list[TreeNode]:
    return [n for n in tree.terminals() if not n["data"].get("failed") and n["data"].get("answer") is not None]


async def discriminate(state: RstarState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Mutual consistency: completes a truncated prefix of every trajectory, concurrently, and
    compares the final answers."""
    tree = Tree.from_state(state["tree"])
    ends = _trajectories(tree)
    results = await gather_survivors(_check(state, runtime, tree, n["id"]) for n in ends)
    checks: dict[str, dict[str, Any]] = {}
    usage: list[Usage] = []
    notes: list[str] = []
    for node, result in zip(ends, results):
        if isinstance(result, UpstreamError):
            checks[str(node["id"])] = {"answer": None, "consistent": None}
            notes.append(f"discriminate: checking trajectory {node['id']} failed: {result.message}")
            continue
        answer, spent = result
        usage.append(spent)
        checks[str(node["id"])] = {
            "answer": answer,
            "consistent": answer is not None and answer == node["data"]["answer"],
        }
    return {"checks": checks, "notes": notes, "usage": reduce(add_usage, usage, empty_usage())}


async def answer(state: RstarState) -> dict[str, Any]:
    """The chosen trajectory, whole; without any answered trajectory, the deepest one generated."""
    tree = Tree.from_state(state["tree"])
    checks = state.get("checks") or {}
    candidates = [
        {
            "node": n["id"],
            "answer": n["data"]["answer"],
            "value": path_value(tree, n["id"]),
            "consistent": (checks.get(str(n["id"])) or {}).get("consistent"),
        }
        for n in _trajectories(tree)
    ]
    if candidates:
        best, how = choose(candidates)
        listed = ", ".join(
            f"{c['node']}: {c['answer']!r} value {c['value']:.2f} "
            f"{ {True: 'consistent', False: 'inconsistent', None: 'unchecked'}[c['consistent']] }"
            for c in candidates
        )
        node_id, note = best["node"], f"answer: trajectory {best['node']} from {how} ({listed})"
    else:
        good = [n for n in tree.nodes[1:] if n["data"].get("text") and not n["data"].get("failed")]
        node_id = max(good, key=lambda n: (n["depth"], -n["id"]))["id"]
        note = f"answer: no trajectory reached an answer; returning the deepest, node {node_id}"
    return {"answers": [text_answer(trajectory_text(tree, node_id))], "notes": [note]}


def after_select(state: RstarState) -> str:
    return "expand" if state.get("frontier") else "discriminate"


def after_backpropagate(state: RstarState) -> str:
    done = (state.get("rollouts") or 0) >= int(_params(state).get("num_rollouts", 5))
    return "discriminate" if done else "select"


def build() -> StateGraph:
    graph = StateGraph(RstarState, context_schema=RunContext)
    graph.add_node("select", select)
    graph.add_node("expand", expand)
    graph.add_node("simulate", simulate)
    graph.add_node("evaluate", evaluate)
    graph.add_node("backpropagate", backpropagate)
    graph.add_node("discriminate", discriminate)
    graph.add_node("answer", answer)
    graph.add_edge(START, "select")
    graph.add_conditional_edges("select", after_select, ["expand", "discriminate"])
    graph.add_edge("expand", "simulate")
    graph.add_edge("simulate", "evaluate")
    graph.add_edge("evaluate", "backpropagate")
    graph.add_conditional_edges("backpropagate", after_backpropagate, ["select", "discriminate"])
    graph.add_edge("discriminate", "answer")
    graph.add_edge("answer", END)
    return graph


SPEC = ApproachSpec(
    name="rstar",
    description="rStar: MCTS over reasoning actions, trajectories kept when a discriminator's completion agrees.",
    build=build,
    params=RstarParams,
    papers=("arXiv:2408.06195",),
    calls="num_rollouts * (max_depth + 1)",
    rounds="ceil(num_rollouts / rollout_batch) * max_depth + 1",
    streams_final=False,
)
