"""The node kinds a declarative spec may use: each wraps a built-in node, with typed settings whose
values may refer to the approach's parameters (`$name`). Add a kind to `NODE_KINDS` to offer it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.state import ApproachState
from optigraph.core.votes import SIMILARITY_THRESHOLD
from optigraph.nodes import aggregate as aggregate_node
from optigraph.nodes import critique as critique_node
from optigraph.nodes import rate as rate_node
from optigraph.nodes.common import answer_of, generation_params
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import sample_candidates
from optigraph.nodes.select import select
from optigraph.nodes.transform import reread
from optigraph.nodes.vote import vote

PARAM_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Setting:
    type: str  # a PARAM_TYPES key
    default: Any = None
    nullable: bool = True  # whether None (the default) is allowed
    description: str = ""


NodeFn = Callable[..., Any]


@dataclass(frozen=True)
class NodeKind:
    description: str
    build: Callable[[str, dict[str, Any]], NodeFn]  # (node id, settings) -> LangGraph node
    settings: dict[str, Setting] = field(default_factory=dict)
    calls: str = "none"  # none | one | per_candidate: upstream calls it makes
    fan_out: bool = False  # one concurrent branch per candidate
    final: bool = False  # writes the final answer
    streams: bool = False  # its answer streams to the client


def type_ok(value: Any, type_name: str) -> bool:
    """Whether `value` is of the declared type (an int is a float; a bool is neither)."""
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, PARAM_TYPES[type_name])


def resolve(value: Any, params: dict[str, Any]) -> Any:
    """A setting's value: a `$name` reference reads the approach parameter `name`."""
    if isinstance(value, str) and value.startswith("$"):
        return params.get(value[1:])
    return value


def _settings(state: ApproachState, settings: dict[str, Any]) -> dict[str, Any]:
    params = state.get("params") or {}
    return {k: resolve(v, params) for k, v in settings.items()}


def _client_or(state: ApproachState, value: Any, key: str, default: Any) -> Any:
    if value is not None:
        return value
    client = (state.get("request") or {}).get(key)
    return default if client is None else client


def _with_params(state: ApproachState, **params: Any) -> dict[str, Any]:
    own = {**(state.get("params") or {}), **{k: v for k, v in params.items() if v is not None}}
    return {**state, "params": own}


# ---- the builders: (node id, settings) -> LangGraph node -----------------------------------------


def _sample(node: str, settings: dict[str, Any]) -> NodeFn:
    async def sample(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        start = len(state.get("candidates") or [])
        out = await sample_candidates(
            state,
            runtime,
            n=int(s["n"]),
            node=node,
            temperature=_client_or(state, s.get("temperature"), "temperature", 1.0),
            max_tokens=s.get("max_tokens"),
        )
        return {**out, "candidates": [{**c, "index": start + c.get("index", 0)} for c in out["candidates"]]}

    return sample


def _rate(node: str, settings: dict[str, Any]) -> NodeFn:
    async def rate(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        return await rate_node.rate(
            _with_params(state, rating_temperature=s.get("temperature"), rating_max_tokens=s.get("max_tokens")), runtime
        )

    return rate


def _select(node: str, settings: dict[str, Any]) -> NodeFn:
    return select


def _vote(node: str, settings: dict[str, Any]) -> NodeFn:
    async def vote_node(state: ApproachState) -> dict[str, Any]:
        s = _settings(state, settings)
        return await vote(_with_params(state, similarity_threshold=s.get("similarity_threshold")))

    return vote_node


def _critique(node: str, settings: dict[str, Any]) -> NodeFn:
    async def critique(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        return await critique_node.critique(
            _with_params(state, critique_temperature=s.get("temperature"), critique_max_tokens=s.get("max_tokens")),
            runtime,
        )

    return critique


def _aggregate(node: str, settings: dict[str, Any]) -> NodeFn:
    async def aggregate(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        return await aggregate_node.aggregate(_with_params(state, aggregate_temperature=s.get("temperature")), runtime)

    return aggregate


def _generate(node: str, settings: dict[str, Any]) -> NodeFn:
    async def generate(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        messages = reread(state["messages"]) if s.get("reread") else state["messages"]
        completion = await generate_final(
            state,
            runtime,
            messages,
            node=node,
            **generation_params(state, temperature=s.get("temperature"), max_tokens=s.get("max_tokens")),
        )
        return {"answers": [answer_of(completion.choices[0])], "usage": completion.usage}

    return generate


def _reread(node: str, settings: dict[str, Any]) -> NodeFn:
    async def reread_node(state: ApproachState) -> dict[str, Any]:
        return {"messages": reread(state["messages"])}

    return reread_node


_TEMPERATURE = Setting("float", description="temperature; default: the client's, else the node's default")
_MAX_TOKENS = Setting("int", description="max_tokens of each call")

# The catalogue: every kind a declarative spec may use. Add a kind here to make it available.
NODE_KINDS: dict[str, NodeKind] = {
    "sample": NodeKind(
        "n candidates from one logical call (client temperature, else 1.0)",
        _sample,
        calls="one",
        settings={
            "n": Setting("int", 1, nullable=False, description="candidates"),
            "temperature": _TEMPERATURE,
            "max_tokens": _MAX_TOKENS,
        },
    ),
    "rate": NodeKind(
        "fan-out: the model rates each candidate 0-10 (skipped for a lone candidate)",
        _rate,
        calls="per_candidate",
        fan_out=True,
        settings={
            "temperature": Setting("float", rate_node.DEFAULT_TEMPERATURE),
            "max_tokens": Setting("int", rate_node.DEFAULT_MAX_TOKENS),
        },
    ),
    "select": NodeKind("the best-rated candidate is the answer (no call)", _select, final=True),
    "vote": NodeKind(
        "majority vote over the candidates' extracted answers (no call)",
        _vote,
        final=True,
        settings={"similarity_threshold": Setting("float", SIMILARITY_THRESHOLD)},
    ),
    "critique": NodeKind(
        "one call critiquing every candidate",
        _critique,
        calls="one",
        settings={
            "temperature": Setting("float", critique_node.DEFAULT_TEMPERATURE),
            "max_tokens": Setting("int", critique_node.DEFAULT_MAX_TOKENS),
        },
    ),
    "aggregate": NodeKind(
        "one call merging the candidates (and critique) into the answer; streams",
        _aggregate,
        calls="one",
        final=True,
        streams=True,
        settings={"temperature": _TEMPERATURE},
    ),
    "generate": NodeKind(
        "one call answering the conversation; streams",
        _generate,
        calls="one",
        final=True,
        streams=True,
        settings={
            "temperature": _TEMPERATURE,
            "max_tokens": _MAX_TOKENS,
            "reread": Setting("bool", False, nullable=False, description="state the question twice"),
        },
    ),
    "reread": NodeKind("rewrites the last user turn to state the question twice (no call)", _reread),
}


def kind_name(kind: NodeKind) -> str:
    """The catalogue name of a kind."""
    return next(k for k, v in NODE_KINDS.items() if v is kind)
