"""Checking a declarative spec, one rule per function, each recording its errors (file:line) in the
document. `validate` runs them in order and returns the graph they describe, or None."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from optigraph.engine.authoring.kinds import (
    NODE_KINDS,
    NodeKind,
    Setting,
    kind_name,
    type_ok,
)
from optigraph.engine.authoring.parameters import Param, read_parameters
from optigraph.engine.authoring.reader import Document, Path_
from optigraph.engine.expression import is_name

TOP_LEVEL = ("name", "description", "parameters", "nodes", "edges", "start", "papers", "calls", "rounds")

Nodes = dict[str, tuple[NodeKind, dict[str, Any]]]  # node id -> (kind, settings)


@dataclass
class Graph:
    """A valid spec's graph: named nodes with their kinds and settings, and the edges between them."""

    name: str
    description: str
    params: dict[str, Param]
    nodes: Nodes
    start: str
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    order: list[str]  # topological


@dataclass
class Edges:
    successors: dict[str, list[str]]
    predecessors: dict[str, list[str]]
    lines: dict[tuple[str, str], int]  # where each edge was given


def validate(doc: Document, data: Any) -> Graph | None:
    """The graph `data` describes, when every rule holds; otherwise None, with the errors in `doc`."""
    if not check_top_level(doc, data):
        return None
    name = check_name(doc, data)
    description = check_description(doc, data)
    params = read_parameters(doc, data.get("parameters"))
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        doc.error(("nodes",), "nodes must be a non-empty mapping of node id -> {kind, settings...}")
        raw_nodes = {}
    nodes = read_nodes(doc, raw_nodes, params)
    edges = read_edges(doc, data.get("edges") or [], [n for n in raw_nodes if isinstance(n, str)])
    start = check_start(doc, data, edges.successors)
    if start is None or doc.errors:
        return None
    reached = check_reachable(doc, start, edges.successors)
    order = topological_order(doc, start, edges)
    check_final_answer(doc, nodes, edges.successors, reached)
    check_fan_out(doc, nodes, edges, reached)
    if doc.errors:
        return None
    return Graph(name, description, params, nodes, start, edges.successors, edges.predecessors, order)


# ---- the document ---------------------------------------------------------------------------------


def check_top_level(doc: Document, data: Any) -> bool:
    """The spec is a mapping, and every top-level key is one of TOP_LEVEL (unknown keys are errors,
    not ignored: a misspelt `edges` would otherwise go unnoticed)."""
    if not isinstance(data, dict):
        doc.error((), "the spec must be a mapping with name, description, parameters, nodes and edges")
        return False
    for key in data:
        if key not in TOP_LEVEL:
            doc.error((key,), f"unknown key {key!r} (allowed: {', '.join(TOP_LEVEL)})", key=True)
    return True


def check_name(doc: Document, data: dict[str, Any]) -> str:
    """The name is usable in an expression: letters, digits and `_` only."""
    name = data.get("name")
    if not isinstance(name, str) or not is_name(name):
        doc.error(("name",), f"name must be letters, digits and _ only, got {name!r}")
        return ""
    return name


def check_description(doc: Document, data: dict[str, Any]) -> str:
    """The description, when given, is text."""
    description = data.get("description", "")
    if not isinstance(description, str):
        doc.error(("description",), "description must be text")
        return ""
    return description or ""


# ---- nodes ----------------------------------------------------------------------------------------


def read_nodes(doc: Document, raw_nodes: dict[Any, Any], params: dict[str, Param]) -> Nodes:
    """Every node that reads cleanly (`read_node`), by id."""
    nodes: Nodes = {}
    for node_id, body in raw_nodes.items():
        node = read_node(doc, ("nodes", node_id), node_id, body, params)
        if node is not None:
            nodes[node_id] = node
    return nodes


def read_node(
    doc: Document, path: Path_, node_id: Any, body: Any, params: dict[str, Param]
) -> tuple[NodeKind, dict[str, Any]] | None:
    """A node: an identifier naming a mapping with a known `kind` and that kind's settings (each
    checked by `check_setting`; unset ones take the kind's defaults)."""
    if not isinstance(node_id, str) or not node_id.isidentifier():
        doc.error(path, f"node id {node_id!r} must be an identifier", key=True)
        return None
    if not isinstance(body, dict) or "kind" not in body:
        doc.error(path, f"node {node_id!r} must be a mapping with a kind")
        return None
    kind_id = body["kind"]
    kind = NODE_KINDS.get(kind_id) if isinstance(kind_id, str) else None
    if kind is None:
        doc.error(path + ("kind",), f"node {node_id!r}: unknown node kind {kind_id!r} (known: {', '.join(NODE_KINDS)})")
        return None
    settings: dict[str, Any] = {k: s.default for k, s in kind.settings.items()}
    for key, value in body.items():
        if key != "kind" and check_setting(doc, path + (key,), node_id, kind_id, kind, key, value, params):
            settings[key] = value
    return kind, settings


def check_setting(
    doc: Document,
    path: Path_,
    node_id: str,
    kind_id: str,
    kind: NodeKind,
    key: str,
    value: Any,
    params: dict[str, Param],
) -> bool:
    """A setting is one the kind has, and its value is either a `$parameter` reference
    (`check_reference`) or a literal of the setting's type (`check_literal`)."""
    setting = kind.settings.get(key)
    if setting is None:
        allowed = ", ".join(kind.settings) or "none"
        doc.error(
            path, f"node {node_id!r}: unknown setting {key!r} for kind {kind_id!r} (settings: {allowed})", key=True
        )
        return False
    if isinstance(value, str) and value.startswith("$"):
        return check_reference(doc, path, node_id, key, setting, value[1:], params)
    return check_literal(doc, path, node_id, key, setting, value)


def check_reference(
    doc: Document, path: Path_, node_id: str, key: str, setting: Setting, ref: str, params: dict[str, Param]
) -> bool:
    """`$name` names a declared parameter of a compatible type (an int parameter may feed a float
    setting), and one that cannot be null where the setting needs a value."""
    param = params.get(ref)
    if param is None:
        doc.error(path, f"node {node_id!r}: setting {key!r} refers to undefined parameter {ref!r}")
        return False
    if not (param.type == setting.type or (setting.type == "float" and param.type == "int")):
        doc.error(
            path, f"node {node_id!r}: setting {key!r} is a {setting.type} but parameter {ref!r} is a {param.type}"
        )
        return False
    if param.default is None and not setting.nullable:
        doc.error(path, f"node {node_id!r}: setting {key!r} needs a value but parameter {ref!r} defaults to null")
        return False
    return True


def check_literal(doc: Document, path: Path_, node_id: str, key: str, setting: Setting, value: Any) -> bool:
    """A literal setting has the setting's type; null only where the setting allows it."""
    if value is None:
        if not setting.nullable:
            doc.error(path, f"node {node_id!r}: setting {key!r} needs a {setting.type}, got null")
            return False
        return True
    if not type_ok(value, setting.type):
        doc.error(path, f"node {node_id!r}: setting {key!r} must be a {setting.type}, got {value!r}")
        return False
    return True


# ---- edges ----------------------------------------------------------------------------------------


def read_edges(doc: Document, raw_edges: Any, names: list[str]) -> Edges:
    """The `edges` list: each entry a chain (`split_edge`) between known nodes, no edge given twice."""
    edges = Edges({n: [] for n in names}, {n: [] for n in names}, {})
    if not isinstance(raw_edges, list):
        doc.error(("edges",), "edges must be a list like ['sample -> rate -> select']")
        return edges
    for i, raw in enumerate(raw_edges):
        path = ("edges", i)
        chain = split_edge(doc, path, raw)
        if chain is None:
            continue
        unknown = [n for group in chain for n in group if n not in edges.successors]
        for n in unknown:
            doc.error(path, f"edge to unknown node {n!r} (nodes: {', '.join(edges.successors)})")
        if not unknown:
            _add_chain(doc, path, chain, edges)
    return edges


def _add_chain(doc: Document, path: Path_, chain: list[list[str]], edges: Edges) -> None:
    """Adds an edge from every node of each group to every node of the next."""
    for sources, targets in pairwise(chain):
        for a in sources:
            for b in targets:
                if b in edges.successors[a]:
                    doc.error(path, f"edge {a} -> {b} is given twice")
                    continue
                edges.successors[a].append(b)
                edges.predecessors[b].append(a)
                edges.lines[(a, b)] = doc.line(path)


def split_edge(doc: Document, path: Path_, raw: Any) -> list[list[str]] | None:
    """An edge entry as a chain of groups: 'a -> b, c -> d' or {from: a, to: [b, c]}, naming at
    least two nodes."""
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


# ---- the graph's shape ----------------------------------------------------------------------------


def check_start(doc: Document, data: dict[str, Any], successors: dict[str, list[str]]) -> str | None:
    """`start`, default the first node, is a node of the graph."""
    start = data.get("start", next(iter(successors), None))
    if start is not None and start not in successors:
        doc.error(("start",), f"start is unknown node {start!r}")
        return None
    return start


def check_reachable(doc: Document, start: str, successors: dict[str, list[str]]) -> list[str]:
    """Every node is reachable from the start node; returns those reached."""
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
    return reached


def topological_order(doc: Document, start: str, edges: Edges) -> list[str]:
    """The reached nodes in an order where every edge points forward; an edge that closes a loop is
    an error (at that edge's line): a declarative graph has none."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str) -> None:
        state[n] = 1
        for m in edges.successors[n]:
            if state.get(m) == 1:
                line = edges.lines.get((n, m), doc.line(("edges",)))
                doc.errors.append((line, f"edge {n} -> {m} closes a loop; a declarative graph has none"))
            elif m not in state:
                visit(m)
        state[n] = 2
        order.append(n)

    visit(start)
    return order[::-1]


def check_final_answer(doc: Document, nodes: Nodes, successors: dict[str, list[str]], reached: list[str]) -> None:
    """Some node writes the final answer, and every node that ends the graph does."""
    if not any(nodes[n][0].final for n in successors if n in nodes):
        doc.error(
            ("nodes",),
            "missing final answer: no node writes one (kinds that do: "
            f"{', '.join(k for k, v in NODE_KINDS.items() if v.final)})",
            key=True,
        )
    for n in reached:
        kind = nodes[n][0]
        if not successors[n] and not kind.final:
            doc.error(
                ("nodes", n),
                f"missing final answer: node {n!r} ({kind_name(kind)}) ends the graph but "
                "does not write the final answer",
                key=True,
            )


def check_fan_out(doc: Document, nodes: Nodes, edges: Edges, reached: list[str]) -> None:
    """A fan-out node (one branch per candidate) has exactly one edge in and one out, and the node
    after it is reached from it alone (it gathers the branches)."""
    for n in reached:
        if not nodes[n][0].fan_out:
            continue
        if len(edges.predecessors[n]) != 1 or len(edges.successors[n]) != 1:
            doc.error(("nodes", n), f"fan-out node {n!r} needs exactly one incoming and one outgoing edge", key=True)
        elif edges.predecessors[edges.successors[n][0]] != [n]:
            doc.error(
                ("nodes", n),
                f"the node after fan-out node {n!r} ({edges.successors[n][0]!r}) must have no other incoming edge",
                key=True,
            )
