"""Authoring approaches outside optigraph, two ways (docs/authoring.md has worked examples).

Python: write a `build() -> StateGraph` over `ApproachState` and turn it into an ApproachSpec with
`@approach(...)` (or build the ApproachSpec yourself). Put the module in the approaches directory
or name it in an `optigraph.approaches` entry point; optigraph/engine/loading.py loads it at start.

Declarative: a YAML or JSON document composed from the built-in nodes in NODE_KINDS, compiled by
`load_declarative` / `parse_declarative` into an ordinary ApproachSpec. It is validated at load;
every error names the file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import Field, create_model

from optigraph.core import cost
from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, ApproachSpec
from optigraph.core.state import ApproachState
from optigraph.core.votes import SIMILARITY_THRESHOLD
from optigraph.engine.expression import is_name
from optigraph.errors import ApproachLoadError
from optigraph.nodes import aggregate as aggregate_node
from optigraph.nodes import critique as critique_node
from optigraph.nodes import rate as rate_node
from optigraph.nodes.common import answer_of, generation_params
from optigraph.nodes.generate import generate_final
from optigraph.nodes.sample import sample_candidates
from optigraph.nodes.select import select
from optigraph.nodes.transform import reread
from optigraph.nodes.vote import vote

__all__ = ["NODE_KINDS", "ApproachParams", "ApproachSpec", "ApproachState", "DeclarativeSpecError", "RunContext",
           "approach", "load_declarative", "parse_declarative"]


# ---- Python ------------------------------------------------------------------------------------

def approach(name: str, *, description: str, params: type[ApproachParams] = ApproachParams,
             papers: Iterable[str] = (), needs: Iterable[str] = ("text",), calls: str = "1", rounds: str = "1",
             streams_final: bool = False) -> Callable[[Callable[[], StateGraph]], ApproachSpec]:
    """Decorates a `build() -> StateGraph` function; the decorated name becomes its ApproachSpec.

    `calls` and `rounds` are cost formulas over the parameters (see optigraph/core/cost.py)."""

    def wrap(build: Callable[[], StateGraph]) -> ApproachSpec:
        return ApproachSpec(name=name, description=description, build=build, params=params,
                            papers=tuple(papers), needs=frozenset(needs), calls=calls, rounds=rounds,
                            streams_final=streams_final)

    return wrap


# ---- declarative: the node kinds ---------------------------------------------------------------

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


def _sample(node: str, settings: dict[str, Any]) -> NodeFn:
    async def sample(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        start = len(state.get("candidates") or [])
        out = await sample_candidates(state, runtime, n=int(s["n"]), node=node,
                                      temperature=_client_or(state, s.get("temperature"), "temperature", 1.0),
                                      max_tokens=s.get("max_tokens"))
        return {**out, "candidates": [{**c, "index": start + c.get("index", 0)} for c in out["candidates"]]}

    return sample


def _with_params(state: ApproachState, **params: Any) -> dict[str, Any]:
    own = {**(state.get("params") or {}), **{k: v for k, v in params.items() if v is not None}}
    return {**state, "params": own}


def _rate(node: str, settings: dict[str, Any]) -> NodeFn:
    async def rate(state: ApproachState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        s = _settings(state, settings)
        return await rate_node.rate(_with_params(state, rating_temperature=s.get("temperature"),
                                                 rating_max_tokens=s.get("max_tokens")), runtime)

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
        return await critique_node.critique(_with_params(state, critique_temperature=s.get("temperature"),
                                                         critique_max_tokens=s.get("max_tokens")), runtime)

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
        completion = await generate_final(state, runtime, messages, node=node, **generation_params(
            state, temperature=s.get("temperature"), max_tokens=s.get("max_tokens")))
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
        "n candidates from one logical call (client temperature, else 1.0)", _sample, calls="one",
        settings={"n": Setting("int", 1, nullable=False, description="candidates"),
                  "temperature": _TEMPERATURE, "max_tokens": _MAX_TOKENS}),
    "rate": NodeKind(
        "fan-out: the model rates each candidate 0-10 (skipped for a lone candidate)", _rate,
        calls="per_candidate", fan_out=True,
        settings={"temperature": Setting("float", rate_node.DEFAULT_TEMPERATURE),
                  "max_tokens": Setting("int", rate_node.DEFAULT_MAX_TOKENS)}),
    "select": NodeKind("the best-rated candidate is the answer (no call)", _select, final=True),
    "vote": NodeKind(
        "majority vote over the candidates' extracted answers (no call)", _vote, final=True,
        settings={"similarity_threshold": Setting("float", SIMILARITY_THRESHOLD)}),
    "critique": NodeKind(
        "one call critiquing every candidate", _critique, calls="one",
        settings={"temperature": Setting("float", critique_node.DEFAULT_TEMPERATURE),
                  "max_tokens": Setting("int", critique_node.DEFAULT_MAX_TOKENS)}),
    "aggregate": NodeKind(
        "one call merging the candidates (and critique) into the answer; streams", _aggregate,
        calls="one", final=True, streams=True, settings={"temperature": _TEMPERATURE}),
    "generate": NodeKind(
        "one call answering the conversation; streams", _generate, calls="one", final=True, streams=True,
        settings={"temperature": _TEMPERATURE, "max_tokens": _MAX_TOKENS,
                  "reread": Setting("bool", False, nullable=False, description="state the question twice")}),
    "reread": NodeKind("rewrites the last user turn to state the question twice (no call)", _reread),
}

TOP_LEVEL = ("name", "description", "parameters", "nodes", "edges", "start", "papers", "calls", "rounds")
PARAM_KEYS = ("type", "default", "min", "max", "description")


# ---- declarative: reading with line numbers ----------------------------------------------------

class DeclarativeSpecError(ApproachLoadError):
    """A declarative spec that does not validate; `errors` holds (line, message) pairs."""

    code = "invalid_approach_spec"

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = sorted(errors)
        super().__init__("\n".join(f"{source}:{line}: {message}" for line, message in self.errors))


Path_ = tuple[Any, ...]


class _Doc:
    """The document as Python values, with the line of each value (and each mapping key)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.key_lines: dict[Path_, int] = {}
        self.errors: list[tuple[int, str]] = []
        self._loader = yaml.SafeLoader("")

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    self.errors.append((key_node.start_mark.line + 1, "mapping keys must be strings"))
                    continue
                if key in out:
                    self.errors.append((key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                self.key_lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.value(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(v, path + (i,)) for i, v in enumerate(node.value)]
        return self._loader.construct_object(node, deep=True)

    def line(self, path: Path_, *, key: bool = False) -> int:
        while path:
            found = (self.key_lines if key else self.lines).get(path) or self.lines.get(path)
            if found:
                return found
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path_, message: str, *, key: bool = False) -> None:
        self.errors.append((self.line(path, key=key), message))


def _type_ok(value: Any, type_name: str) -> bool:
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, PARAM_TYPES[type_name])


def _param_ref_ok(param_type: str, setting_type: str) -> bool:
    return param_type == setting_type or (setting_type == "float" and param_type == "int")


@dataclass
class _Param:
    type: str
    default: Any
    min: Any = None
    max: Any = None
    description: str = ""


def _read_parameters(doc: _Doc, raw: Any) -> dict[str, _Param]:
    out: dict[str, _Param] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        doc.error(("parameters",), "parameters must be a mapping of name -> {type, default, min, max, description}")
        return out
    for name, body in raw.items():
        path = ("parameters", name)
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            doc.error(path, f"parameter name {name!r} must be an identifier", key=True)
            continue
        if not isinstance(body, dict):
            doc.error(path, f"parameter {name!r} must be a mapping with type and default")
            continue
        for key in body:
            if key not in PARAM_KEYS:
                doc.error(path + (key,), f"unknown key {key!r} in parameter {name!r} (allowed: {', '.join(PARAM_KEYS)})",
                          key=True)
        type_name = body.get("type")
        if type_name not in PARAM_TYPES:
            doc.error(path + ("type",), f"parameter {name!r}: type must be one of {', '.join(PARAM_TYPES)}, "
                                        f"got {type_name!r}")
            continue
        if "default" not in body:
            doc.error(path, f"parameter {name!r} needs a default (null for 'unset')")
            continue
        default = body["default"]
        if default is not None and not _type_ok(default, type_name):
            doc.error(path + ("default",), f"parameter {name!r}: default {default!r} is not a {type_name}")
            continue
        bounds = {}
        for bound in ("min", "max"):
            value = body.get(bound)
            if value is None:
                continue
            if type_name not in ("int", "float") or not _type_ok(value, "float"):
                doc.error(path + (bound,), f"parameter {name!r}: {bound} must be a number, for an int or float parameter")
                continue
            bounds[bound] = value
        if default is not None and (("min" in bounds and default < bounds["min"])
                                    or ("max" in bounds and default > bounds["max"])):
            doc.error(path + ("default",), f"parameter {name!r}: default {default!r} is outside [min, max]")
        description = body.get("description") or ""
        if not isinstance(description, str):
            doc.error(path + ("description",), f"parameter {name!r}: description must be text")
            description = ""
        out[name] = _Param(type_name, default, bounds.get("min"), bounds.get("max"), description)
    return out


def _params_model(name: str, params: dict[str, _Param]) -> type[ApproachParams]:
    fields: dict[str, Any] = {}
    for pname, p in params.items():
        annotation: Any = PARAM_TYPES[p.type]
        if p.default is None:
            annotation = annotation | None
        fields[pname] = (annotation, Field(p.default, ge=p.min, le=p.max, description=p.description or None))
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Params"
    return create_model(model_name, __base__=ApproachParams, **fields)


def _split_edge(doc: _Doc, path: Path_, raw: Any) -> list[list[str]] | None:
    """An edge entry as a chain of groups: 'a -> b, c -> d' or {from: a, to: [b, c]}."""
    if isinstance(raw, str):
        chain = [[part.strip() for part in group.split(",")] for group in raw.split("->")]
    elif isinstance(raw, dict) and set(raw) <= {"from", "to"} and {"from", "to"} <= set(raw):
        chain = []
        for end in ("from", "to"):
            value = raw[end]
            chain.append([value] if isinstance(value, str) else value if isinstance(value, list) else [])
    else:
        doc.error(path, "an edge is 'a -> b' (a chain; 'b, c' for several at once) or {from: a, to: [b, c]}")
        return None
    if len(chain) < 2 or any(not group or any(not isinstance(n, str) or not n for n in group) for group in chain):
        doc.error(path, f"malformed edge {raw!r}: it needs at least two node names, like 'sample -> rate'")
        return None
    return chain


@dataclass
class _Graph:
    name: str
    description: str
    params: dict[str, _Param]
    nodes: dict[str, tuple[NodeKind, dict[str, Any]]]
    start: str
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    order: list[str]  # topological


def _validate(doc: _Doc, data: Any) -> _Graph | None:
    if not isinstance(data, dict):
        doc.error((), "the spec must be a mapping with name, description, parameters, nodes and edges")
        return None
    for key in data:
        if key not in TOP_LEVEL:
            doc.error((key,), f"unknown key {key!r} (allowed: {', '.join(TOP_LEVEL)})", key=True)
    name = data.get("name")
    if not isinstance(name, str) or not is_name(name):
        doc.error(("name",), f"name must be letters, digits and _ only, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        doc.error(("description",), "description must be text")
    params = _read_parameters(doc, data.get("parameters"))

    raw_nodes = data.get("nodes")
    nodes: dict[str, tuple[NodeKind, dict[str, Any]]] = {}
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        doc.error(("nodes",), "nodes must be a non-empty mapping of node id -> {kind, settings...}")
        raw_nodes = {}
    for node_id, body in raw_nodes.items():
        path = ("nodes", node_id)
        if not isinstance(node_id, str) or not node_id.isidentifier():
            doc.error(path, f"node id {node_id!r} must be an identifier", key=True)
            continue
        if not isinstance(body, dict) or "kind" not in body:
            doc.error(path, f"node {node_id!r} must be a mapping with a kind")
            continue
        kind_name = body["kind"]
        kind = NODE_KINDS.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            doc.error(path + ("kind",), f"node {node_id!r}: unknown node kind {kind_name!r} "
                                        f"(known: {', '.join(NODE_KINDS)})")
            continue
        settings: dict[str, Any] = {k: s.default for k, s in kind.settings.items()}
        for key, value in body.items():
            if key == "kind":
                continue
            spath = path + (key,)
            setting = kind.settings.get(key)
            if setting is None:
                allowed = ", ".join(kind.settings) or "none"
                doc.error(spath, f"node {node_id!r}: unknown setting {key!r} for kind {kind_name!r} "
                                 f"(settings: {allowed})", key=True)
                continue
            if isinstance(value, str) and value.startswith("$"):
                ref = value[1:]
                param = params.get(ref)
                if param is None:
                    doc.error(spath, f"node {node_id!r}: setting {key!r} refers to undefined parameter {ref!r}")
                    continue
                if not _param_ref_ok(param.type, setting.type):
                    doc.error(spath, f"node {node_id!r}: setting {key!r} is a {setting.type} but parameter "
                                     f"{ref!r} is a {param.type}")
                    continue
                if param.default is None and not setting.nullable:
                    doc.error(spath, f"node {node_id!r}: setting {key!r} needs a value but parameter {ref!r} "
                                     "defaults to null")
                    continue
            elif value is None:
                if not setting.nullable:
                    doc.error(spath, f"node {node_id!r}: setting {key!r} needs a {setting.type}, got null")
                    continue
            elif not _type_ok(value, setting.type):
                doc.error(spath, f"node {node_id!r}: setting {key!r} must be a {setting.type}, got {value!r}")
                continue
            settings[key] = value
        nodes[node_id] = (kind, settings)

    # edges
    successors: dict[str, list[str]] = {n: [] for n in raw_nodes if isinstance(n, str)}
    predecessors: dict[str, list[str]] = {n: [] for n in raw_nodes if isinstance(n, str)}
    raw_edges = data.get("edges") or []
    if not isinstance(raw_edges, list):
        doc.error(("edges",), "edges must be a list like ['sample -> rate -> select']")
        raw_edges = []
    edge_line: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(raw_edges):
        path = ("edges", i)
        chain = _split_edge(doc, path, raw)
        if chain is None:
            continue
        unknown = [n for group in chain for n in group if n not in successors]
        for n in unknown:
            doc.error(path, f"edge to unknown node {n!r} (nodes: {', '.join(successors)})")
        if unknown:
            continue
        for sources, targets in pairwise(chain):
            for a in sources:
                for b in targets:
                    if b in successors[a]:
                        doc.error(path, f"edge {a} -> {b} is given twice")
                        continue
                    successors[a].append(b)
                    predecessors[b].append(a)
                    edge_line[(a, b)] = doc.line(path)

    start = data.get("start", next(iter(successors), None))
    if start is not None and start not in successors:
        doc.error(("start",), f"start is unknown node {start!r}")
        start = None
    if start is None or doc.errors:
        return None

    # reachability, cycles, order
    reached: list[str] = []
    stack = [start]
    while stack:
        n = stack.pop()
        if n in reached:
            continue
        reached.append(n)
        stack.extend(successors[n])
    for n in successors:
        if n not in reached:
            doc.error(("nodes", n), f"node {n!r} is unreachable from the start node {start!r}", key=True)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str) -> None:
        state[n] = 1
        for m in successors[n]:
            if state.get(m) == 1:
                doc.error(("edges",), f"edge {n} -> {m} closes a loop; a declarative graph has none")
                doc.errors[-1] = (edge_line.get((n, m), doc.errors[-1][0]), doc.errors[-1][1])
            elif m not in state:
                visit(m)
        state[n] = 2
        order.append(n)

    visit(start)
    order.reverse()

    # the final answer and fan-out shape
    finals = [n for n in successors if n in nodes and nodes[n][0].final]
    if not finals:
        doc.error(("nodes",), "missing final answer: no node writes one (kinds that do: "
                              f"{', '.join(k for k, v in NODE_KINDS.items() if v.final)})", key=True)
    for n in reached:
        kind = nodes[n][0]
        if not successors[n] and not kind.final:
            doc.error(("nodes", n), f"missing final answer: node {n!r} ({_kind_name(kind)}) ends the graph but "
                                    "does not write the final answer", key=True)
        if kind.fan_out:
            if len(predecessors[n]) != 1 or len(successors[n]) != 1:
                doc.error(("nodes", n), f"fan-out node {n!r} needs exactly one incoming and one outgoing edge",
                          key=True)
            elif predecessors[successors[n][0]] != [n]:
                doc.error(("nodes", n), f"the node after fan-out node {n!r} ({successors[n][0]!r}) must have no "
                                        "other incoming edge", key=True)
    if doc.errors:
        return None
    return _Graph(name, description or "", params, nodes, start, successors, predecessors, order)


def _kind_name(kind: NodeKind) -> str:
    return next(k for k, v in NODE_KINDS.items() if v is kind)


def _cost(graph: _Graph) -> tuple[str, str]:
    """Calls and rounds formulas over the parameters, for the full path."""
    candidates: list[str] = []
    for n in graph.order:
        kind, settings = graph.nodes[n]
        if _kind_name(kind) == "sample":
            v = settings["n"]
            candidates.append(v[1:] if isinstance(v, str) else str(v))
    per_candidate = " + ".join(candidates) or "0"
    if len(candidates) > 1:
        per_candidate = f"({per_candidate})"
    fixed, terms = 0, []
    rounds: dict[str, int] = {}
    for n in graph.order:
        kind = graph.nodes[n][0]
        if kind.calls == "one":
            fixed += 1
        elif kind.calls == "per_candidate":
            terms.append(per_candidate)
        before = max((rounds[p] for p in graph.predecessors[n] if p in rounds), default=0)
        rounds[n] = before + (kind.calls != "none")
    calls = " + ".join(([str(fixed)] if fixed or not terms else []) + terms)
    return calls, str(max(rounds.values(), default=0))


def _compile(graph: _Graph) -> Callable[[], StateGraph]:
    def build() -> StateGraph:
        g = StateGraph(critique_node.CritiqueState, context_schema=RunContext)
        for n in graph.order:
            kind, settings = graph.nodes[n]
            g.add_node(n, kind.build(n, settings))
        g.add_edge(START, graph.start)
        for n in graph.order:
            targets = graph.successors[n]
            fan = [t for t in targets if graph.nodes[t][0].fan_out]
            for t in targets:
                if t not in fan and len(graph.predecessors[t]) == 1:
                    g.add_edge(n, t)
            for t in fan:
                after = graph.successors[t][0]
                g.add_conditional_edges(n, _fan_out_router(t, after), [t, after])
            if not targets:
                g.add_edge(n, END)
        for n in graph.order:
            preds = graph.predecessors[n]
            if len(preds) > 1:
                g.add_edge(preds, n)  # waits for every branch
            if graph.nodes[n][0].fan_out:
                g.add_edge(n, graph.successors[n][0])
        return g

    return build


def _fan_out_router(node: str, after: str) -> Callable[[ApproachState], Any]:
    def route(state: ApproachState) -> Any:
        return rate_node.rate_each(state, node=node) if len(state.get("candidates") or []) > 1 else after

    route.__name__ = f"route_{node}"
    return route


def parse_declarative(text: str, source: str = "<spec>") -> ApproachSpec:
    """An ApproachSpec from a YAML or JSON document; DeclarativeSpecError lists file:line errors."""
    doc = _Doc(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise DeclarativeSpecError(source, [((mark.line + 1) if mark else 1, f"not valid YAML or JSON: {exc.problem}")]) from None
    if root is None:
        raise DeclarativeSpecError(source, [(1, "the spec is empty")])
    data = doc.value(root, ())
    graph = _validate(doc, data)
    if graph is None:
        raise DeclarativeSpecError(source, doc.errors)
    params = _params_model(graph.name, graph.params)
    calls, rounds = _cost(graph)
    defaults = params().model_dump()
    for key in ("calls", "rounds"):
        if key not in data:
            continue
        formula = data[key]
        try:
            cost.evaluate(str(formula), defaults)
        except (ValueError, SyntaxError, TypeError) as exc:
            doc.error((key,), f"{key}: bad cost formula {formula!r}: {exc}")
            continue
        calls, rounds = (str(formula), rounds) if key == "calls" else (calls, str(formula))
    papers = data.get("papers") or []
    if not isinstance(papers, list) or not all(isinstance(p, str) for p in papers):
        doc.error(("papers",), "papers must be a list of strings")
    if doc.errors:
        raise DeclarativeSpecError(source, doc.errors)
    terminals = [n for n in graph.order if not graph.successors[n]]
    return ApproachSpec(
        name=graph.name, description=graph.description, build=_compile(graph), params=params,
        papers=tuple(papers), calls=calls, rounds=rounds,
        streams_final=all(graph.nodes[n][0].streams for n in terminals))


def load_declarative(path: Path | str) -> ApproachSpec:
    """An ApproachSpec from a .yaml, .yml or .json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclarativeSpecError(str(path), [(1, f"cannot be read: {exc}")]) from None
    return parse_declarative(text, str(path))
