"""`mcts`: dialogue-level Monte Carlo tree search. After "Monte Carlo Tree Search Boosts Reasoning via
Iterative Preference Learning" (Xie et al., 2024, arXiv 2405.00451): select by UCT, expand several
candidate continuations, evaluate them, back the values up the tree; here a tree state is a
conversation and an action is a whole assistant reply followed by the user's (simulated) next turn.

Each simulation: `select` descends from the root by UCT (mean value + c * sqrt(ln N_parent / n),
c = `exploration`) to a leaf, through as many levels as the tree has; `expand` samples `expansions`
replies to the leaf's conversation in one n-call; `simulate` plays each reply forward concurrently:
the user's next message, then `depth - 1` further assistant/user exchanges; `evaluate` has the model
judge each reply's correctness and helpfulness (0-10, read loosely, the simulated follow-up shown as
evidence), concurrently; `backpropagate` gives each new reply one visit of its own value, and the
leaf and its ancestors one visit of the mean of those values (one visit per simulation, as in MCTS).
So a reply's mean mixes its own judgment with how the conversation goes after it: a reply judged well
whose follow-ups go badly (the simulated user finds a mistake, the next replies are judged poorly)
loses value, and UCT then turns to its siblings. The answer is the root reply with the highest mean
value, ties broken by visits.

At the defaults (2 simulations, 3 expansions, depth 1: 14 calls) the first simulation is a judged
best-of-3 (7 calls); the second plays the leading reply's conversation one level deeper (7 calls),
and the answer changes when the mean of that reply's own score and its follow-ups' falls below the
runner-up's score. From the third simulation UCT's exploration term can send a simulation into another branch.

A reply whose simulated follow-up failed, or that calls a tool, is a leaf that is not expanded
further; an evaluation that failed or cannot be read leaves the reply unvisited (noted), never
scored 0. Sampling the root's replies failing entirely ends the run with the upstream error.

Graph: START -> select -> expand -> simulate -> evaluate -> backpropagate -> select ... (until
`simulations` are done) -> answer -> END.
Cost per simulation: 1 sampling call (n = expansions) + expansions * (2 * depth - 1) simulation
calls + expansions evaluation calls, in 1 + (2 * depth - 1) + 1 dependent rounds. That is also the
expected cost: only failures, empty replies and tool calls (leaves that are not expanded) make fewer.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import AliasChoices, Field

from optigraph.core.answers import strip_think
from optigraph.core.context import RunContext
from optigraph.core.judgments import parse_unit_score
from optigraph.core.messages import message_text
from optigraph.core.spec import ApproachParams, ApproachSpec, client_temperature
from optigraph.core.state import ApproachState, candidate_text
from optigraph.core.usage import Usage, add_usage, empty_usage
from optigraph.errors import UpstreamError
from optigraph.nodes.common import answer_of, helper_params
from optigraph.nodes.sample import is_usable, param_or_client, sample_candidates
from optigraph.nodes.search import Tree, TreeNode, gather_survivors

USER_SIMULATOR = """You play the user in a conversation with an AI assistant. Given the conversation \
so far, write the user's next message, reacting to the assistant's last reply the way this user \
would: ask a natural follow-up, point out a mistake or something missing, or confirm that it solved \
the problem. Write only the message itself, in the user's voice."""

USER_SIMULATOR_PROMPT = "The conversation so far:\n\n{transcript}\n\nWrite the user's next message."

EVALUATION_REQUEST = """Evaluate your previous reply to me. Judge whether it is correct and helpful \
for what I asked: right facts and reasoning, a complete answer to the request, clearly put. Do not \
reward length, flattery or style.{followup}

Reply with a score from 0 to 10, where 0 means wrong or unhelpful and 10 means correct, complete and \
helpful. Give the number only."""

FOLLOWUP_EVIDENCE = """

For context, here is how the conversation might continue (simulated; it may reveal problems with \
the reply, but it may also be wrong):
{continuation}"""

DEFAULT_TEMPERATURE = 1.0
DEFAULT_EVALUATION_TEMPERATURE = 0.1
DEFAULT_EVALUATION_MAX_TOKENS = 256
DEFAULT_SIMULATION_MAX_TOKENS = 512


class MctsParams(ApproachParams):
    simulations: int = Field(
        2,
        ge=1,
        le=64,
        validation_alias=AliasChoices("simulations", "mcts_simulations"),
        description="Search iterations (select, expand, simulate, evaluate, backpropagate). Also `mcts_simulations`.",
    )
    exploration: float = Field(
        0.2,
        ge=0.0,
        le=10.0,
        validation_alias=AliasChoices("exploration", "mcts_exploration"),
        description="UCT exploration constant c. Also `mcts_exploration`.",
    )
    depth: int = Field(
        1,
        ge=1,
        le=8,
        validation_alias=AliasChoices("depth", "mcts_depth"),
        description="Simulated user turns after each candidate reply (1: the user's reaction only). Also `mcts_depth`.",
    )
    expansions: int = Field(3, ge=1, le=16, description="Candidate replies sampled per expansion (one n-call).")
    temperature: float | None = client_temperature(DEFAULT_TEMPERATURE, "Temperature of candidate replies")
    simulation_temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature of the simulated user.")
    simulation_max_tokens: int = Field(DEFAULT_SIMULATION_MAX_TOKENS, ge=1, le=32768)
    evaluation_temperature: float = Field(DEFAULT_EVALUATION_TEMPERATURE, ge=0.0, le=2.0)
    evaluation_max_tokens: int = Field(DEFAULT_EVALUATION_MAX_TOKENS, ge=1, le=32768)


class MctsState(ApproachState, total=False):
    tree: dict[str, Any]  # search.Tree.to_state(); node data: reply, user, rollout, score
    simulation: int  # simulations completed
    leaf: int | None  # the node this simulation expands (None: nothing left to expand)
    frontier: list[int]  # the children this simulation added


# ---- conversations --------------------------------------------------------------------------------


def reply_message(node: TreeNode) -> dict[str, Any]:
    """The node's reply as a plain assistant turn (tool calls written out) for later prompts."""
    return {"role": "assistant", "content": node["data"].get("text", "")}


def conversation(tree: Tree, node_id: int, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The client's conversation followed by every reply and simulated user turn down to the node."""
    out = list(messages)
    for node in tree.path(node_id)[1:]:
        out.append(reply_message(node))
        if node["data"].get("user") is not None:
            out.append({"role": "user", "content": node["data"]["user"]})
    return out


def transcript(messages: list[dict[str, Any]]) -> str:
    names = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    return "\n\n".join(f"{names.get(m.get('role', ''), 'User')}: {message_text(m)}" for m in messages)


def simulator_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": USER_SIMULATOR},
        {"role": "user", "content": USER_SIMULATOR_PROMPT.format(transcript=transcript(messages))},
    ]


def evaluation_messages(before: list[dict[str, Any]], node: TreeNode) -> list[dict[str, Any]]:
    """The conversation up to the reply, the reply, then the request to score it; the simulated
    continuation (the user's reaction and any further turns) is shown as evidence."""
    data = node["data"]
    turns = ([{"role": "user", "content": data["user"]}] if data.get("user") is not None else []) + list(
        data.get("rollout") or []
    )
    followup = FOLLOWUP_EVIDENCE.format(continuation=transcript(turns)) if turns else ""
    return [*before, reply_message(node), {"role": "user", "content": EVALUATION_REQUEST.format(followup=followup)}]


def _params(state: MctsState) -> dict[str, Any]:
    return state.get("params") or {}


# ---- graph nodes ----------------------------------------------------------------------------------


async def select(state: MctsState) -> dict[str, Any]:
    """UCT descent from the root to the leaf to expand (a fresh tree's root on the first pass)."""
    tree = Tree.from_state(state.get("tree"))
    c = float(_params(state).get("exploration", 0.2))
    leaf = tree.select(c, expandable=lambda n: not n["children"])
    return {"tree": tree.to_state(), "leaf": leaf, "frontier": [], "simulation": state.get("simulation") or 0}


async def expand(state: MctsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Samples candidate replies to the leaf's conversation in one n-call; each becomes a child."""
    tree = Tree.from_state(state["tree"])
    leaf = state["leaf"]
    assert leaf is not None
    params = _params(state)
    n = int(params.get("expansions", 3))
    temperature = param_or_client(state, "temperature", DEFAULT_TEMPERATURE)
    messages = conversation(tree, leaf, state["messages"])
    try:
        sampled = await sample_candidates(
            state, runtime, n=n, node="expand", messages=messages, temperature=temperature
        )
    except UpstreamError as exc:
        if leaf == 0:
            raise  # nothing to answer with
        tree[leaf]["terminal"] = True
        note = f"expand: node {leaf} failed, left as a leaf: {exc.message}"
        return {"tree": tree.to_state(), "frontier": [], "notes": [note]}
    candidates = sampled["candidates"]
    if leaf != 0:  # below the root an empty reply is no candidate (at the root, all-empty is still an answer)
        candidates = [c for c in candidates if is_usable(c)]
        if not candidates:
            tree[leaf]["terminal"] = True
            return {
                "tree": tree.to_state(),
                "frontier": [],
                "usage": sampled["usage"],
                "notes": [*sampled["notes"], f"expand: node {leaf} got no usable reply, left as a leaf"],
            }
    frontier = []
    for cand in candidates:
        message = cand.get("message") or {}
        frontier.append(
            tree.add_child(
                leaf,
                {
                    "text": candidate_text(cand),
                    "message": message,
                    "finish_reason": cand.get("finish_reason"),
                },
                terminal=bool(message.get("tool_calls")),
            )
        )  # a tool call waits for a tool result, not the user
    return {"tree": tree.to_state(), "frontier": frontier, "usage": sampled["usage"], "notes": sampled["notes"]}


async def _play_forward(
    state: MctsState, runtime: Runtime[RunContext], before: list[dict[str, Any]], node: TreeNode
) -> dict[str, Any]:
    """The user's reaction to the reply (None when it came back empty), then `depth - 1` more
    assistant/user exchanges; a failure after the reaction ends the rollout early, noted."""
    params = _params(state)
    llm = runtime.context.llm
    user_call = helper_params(
        state,
        temperature=params.get("simulation_temperature", 1.0),
        max_tokens=params.get("simulation_max_tokens", DEFAULT_SIMULATION_MAX_TOKENS),
    )
    reply_call = helper_params(
        state,
        temperature=param_or_client(state, "temperature", DEFAULT_TEMPERATURE),
        max_tokens=(state.get("request") or {}).get("max_tokens"),
    )
    talk = [*before, reply_message(node)]
    completion = await llm.chat(simulator_messages(talk), node="simulate", **user_call)
    usage: list[Usage] = [completion.usage]
    user = strip_think(completion.text) or None
    rollout: list[dict[str, Any]] = []
    notes: list[str] = []
    if user is not None:
        talk.append({"role": "user", "content": user})
        try:
            for _ in range(int(params.get("depth", 1)) - 1):
                reply = await llm.chat(talk, node="simulate", **reply_call)
                usage.append(reply.usage)
                turn = {"role": "assistant", "content": reply.text}
                follow = await llm.chat(simulator_messages([*talk, turn]), node="simulate", **user_call)
                usage.append(follow.usage)
                rollout += [turn, {"role": "user", "content": strip_think(follow.text)}]
                talk += rollout[-2:]
        except UpstreamError as exc:
            notes.append(f"simulate: the rollout after reply {node['id']} ended early: {exc.message}")
    return {"user": user, "rollout": rollout, "usage": usage, "notes": notes}


async def simulate(state: MctsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Plays every new reply forward, concurrently. A reply whose simulated follow-up failed or
    came back empty stays a leaf that is not expanded further (it is still evaluated)."""
    tree = Tree.from_state(state["tree"])
    open_ids = [i for i in state.get("frontier") or [] if not tree[i]["terminal"]]
    before = conversation(tree, state["leaf"], state["messages"]) if open_ids else []
    results = await gather_survivors(_play_forward(state, runtime, before, tree[i]) for i in open_ids)
    usage: list[Usage] = []
    notes: list[str] = []
    for node_id, result in zip(open_ids, results):
        if isinstance(result, UpstreamError):
            tree[node_id]["terminal"] = True
            notes.append(f"simulate: reply {node_id} could not be played forward: {result.message}")
            continue
        usage.extend(result["usage"])
        notes.extend(result["notes"])
        if result["user"] is None:
            tree[node_id]["terminal"] = True
            notes.append(f"simulate: the simulated user turn after reply {node_id} came back empty")
            continue
        tree[node_id]["data"].update(user=result["user"], rollout=result["rollout"])
    return {"tree": tree.to_state(), "notes": notes, "usage": reduce(add_usage, usage, empty_usage())}


async def evaluate(state: MctsState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Scores every new reply for correctness and helpfulness, concurrently (value in [0, 1])."""
    tree = Tree.from_state(state["tree"])
    frontier = state.get("frontier") or []
    if not frontier:
        return {}
    params = _params(state)
    before = conversation(tree, state["leaf"], state["messages"])
    call = helper_params(
        state,
        temperature=params.get("evaluation_temperature", DEFAULT_EVALUATION_TEMPERATURE),
        max_tokens=params.get("evaluation_max_tokens", DEFAULT_EVALUATION_MAX_TOKENS),
    )
    llm = runtime.context.llm
    results = await gather_survivors(
        llm.chat(evaluation_messages(before, tree[i]), node="evaluate", **call) for i in frontier
    )
    usage: list[Usage] = []
    notes: list[str] = []
    for node_id, result in zip(frontier, results):
        data = tree[node_id]["data"]
        if isinstance(result, UpstreamError):
            data["score"] = None
            notes.append(f"evaluate: evaluating reply {node_id} failed, left unvisited: {result.message}")
            continue
        usage.append(result.usage)
        data["score"], data["evaluation"] = parse_unit_score(result.text), result.text
        if data["score"] is None:
            notes.append(f"evaluate: no score found for reply {node_id} in {result.text[:120]!r}, left unvisited")
    return {"tree": tree.to_state(), "notes": notes, "usage": reduce(add_usage, usage, empty_usage())}


async def backpropagate(state: MctsState) -> dict[str, Any]:
    """Gives each newly scored reply one visit of its own value, then the leaf and its ancestors one
    visit of those values' mean; counts the simulation. Without a score nothing is backed up."""
    tree = Tree.from_state(state["tree"])
    scores = []
    for node_id in state.get("frontier") or []:
        score = tree[node_id]["data"].get("score")
        if score is not None:
            tree.visit(node_id, float(score))
            scores.append(float(score))
    if scores:
        tree.backpropagate(state["leaf"], sum(scores) / len(scores))
    return {"tree": tree.to_state(), "simulation": (state.get("simulation") or 0) + 1}


def after_select(state: MctsState) -> str:
    return "answer" if state.get("leaf") is None else "expand"


def after_backpropagate(state: MctsState) -> str:
    done = (state.get("simulation") or 0) >= int(_params(state).get("simulations", 2))
    return "answer" if done else "select"


def best_reply(tree: Tree) -> int | None:
    """The root reply with the highest mean value, ties broken by more visits, then by order; None
    when no reply was visited."""
    visited = [ch for ch in tree.root["children"] if tree[ch]["visits"] > 0]
    if not visited:
        return None
    return max(visited, key=lambda ch: (tree.mean(ch) or 0.0, tree[ch]["visits"], -ch))


async def answer(state: MctsState) -> dict[str, Any]:
    """The root reply with the highest mean value (`best_reply`); the first reply if none was
    evaluated."""
    tree = Tree.from_state(state["tree"])
    best = best_reply(tree)
    notes = []
    if best is None:
        best = tree.root["children"][0]
        notes.append("answer: no reply could be evaluated; returning the first")
    stats = ", ".join(f"{ch}: {tree[ch]['visits']} visits, mean {_fmt(tree.mean(ch))}" for ch in tree.root["children"])
    notes.append(f"answer: reply {best} ({stats})")
    data = tree[best]["data"]
    return {
        "answers": [answer_of({"message": data["message"], "finish_reason": data.get("finish_reason")})],
        "notes": notes,
    }


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


def build() -> StateGraph:
    graph = StateGraph(MctsState, context_schema=RunContext)
    graph.add_node("select", select)
    graph.add_node("expand", expand)
    graph.add_node("simulate", simulate)
    graph.add_node("evaluate", evaluate)
    graph.add_node("backpropagate", backpropagate)
    graph.add_node("answer", answer)
    graph.add_edge(START, "select")
    graph.add_conditional_edges("select", after_select, ["expand", "answer"])
    graph.add_edge("expand", "simulate")
    graph.add_edge("simulate", "evaluate")
    graph.add_edge("evaluate", "backpropagate")
    graph.add_conditional_edges("backpropagate", after_backpropagate, ["select", "answer"])
    graph.add_edge("answer", END)
    return graph


SPEC = ApproachSpec(
    name="mcts",
    description="Dialogue-level MCTS: UCT over candidate replies and simulated follow-ups, judged for correctness.",
    build=build,
    params=MctsParams,
    papers=("arXiv:2405.00451",),
    calls="simulations * (1 + 2 * expansions * depth)",
    rounds="simulations * (2 * depth + 1)",
    streams_final=False,
)
