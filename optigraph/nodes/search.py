"""search: a small Monte Carlo tree search core shared by the tree-search approaches (no LLM).

A `Tree` holds nodes with a visit count and a sum of backed-up values in [0, 1]; it selects a node to
expand by UCT (Kocsis and Szepesvári, 2006: mean value + c * sqrt(ln N_parent / n_child)), optionally
with progressive widening (a node gets a new child only while it has fewer than ceil((N + 1) ** 0.5)
children), adds children, backpropagates values along the path to the root, applies virtual losses
so several concurrent selections spread over the tree, and picks the final child (most visits, ties
broken by mean value).

The approach decides what a node means (a conversation turn, a reasoning step) and keeps that in the
node's `data`. The tree is plain lists and dicts (`to_state`/`from_state`), so it lives in graph
state and checkpoints as JSON; `from_state` copies, so a graph node never mutates the state it read.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypedDict, TypeVar

from optigraph.errors import UpstreamError

WIDENING_EXPONENT = 0.5

T = TypeVar("T")


class TreeNode(TypedDict):
    id: int
    parent: int | None
    children: list[int]
    depth: int  # the root is 0
    visits: int
    value: float  # sum of the values backed up through this node
    terminal: bool  # can never be expanded (a final answer, a dead end)
    data: dict[str, Any]  # what the approach stores: the reply, the step, its evaluation...


Expandable = Callable[[TreeNode], bool]


class Tree:
    """A search tree; node ids are positions in `nodes`, the root is node 0."""

    def __init__(self, nodes: list[TreeNode]) -> None:
        if not nodes:
            raise ValueError("a tree needs a root")
        self.nodes = nodes

    @classmethod
    def new(cls, data: dict[str, Any] | None = None) -> Tree:
        return cls([_node(0, None, 0, data or {})])

    @classmethod
    def from_state(cls, raw: dict[str, Any] | None, data: dict[str, Any] | None = None) -> Tree:
        """A private copy of a tree kept in graph state; a new tree when there is none yet."""
        if not raw:
            return cls.new(data)
        return cls(copy.deepcopy(raw["nodes"]))

    def to_state(self) -> dict[str, Any]:
        return {"nodes": copy.deepcopy(self.nodes)}

    def __getitem__(self, node_id: int) -> TreeNode:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def root(self) -> TreeNode:
        return self.nodes[0]

    # ---- structure ------------------------------------------------------------------------------

    def add_child(self, parent: int, data: dict[str, Any] | None = None, *, terminal: bool = False) -> int:
        """Adds a child of `parent` (expansion) and returns its id."""
        node = _node(len(self.nodes), parent, self.nodes[parent]["depth"] + 1, data or {}, terminal=terminal)
        self.nodes.append(node)
        self.nodes[parent]["children"].append(node["id"])
        return node["id"]

    def children(self, node_id: int) -> list[TreeNode]:
        return [self.nodes[c] for c in self.nodes[node_id]["children"]]

    def path(self, node_id: int) -> list[TreeNode]:
        """The nodes from the root down to `node_id`, both included."""
        out: list[TreeNode] = []
        current: int | None = node_id
        while current is not None:
            out.append(self.nodes[current])
            current = self.nodes[current]["parent"]
        return out[::-1]

    def terminals(self) -> list[TreeNode]:
        return [n for n in self.nodes if n["terminal"]]

    # ---- statistics -----------------------------------------------------------------------------

    def mean(self, node_id: int) -> float | None:
        """The node's mean backed-up value; None before its first visit."""
        node = self.nodes[node_id]
        return node["value"] / node["visits"] if node["visits"] > 0 else None

    def uct(self, node_id: int, c: float) -> float:
        """UCT score of a non-root node: unvisited nodes come first (infinite score)."""
        node = self.nodes[node_id]
        if node["visits"] <= 0:
            return math.inf
        parent_visits = self.nodes[node["parent"]]["visits"] if node["parent"] is not None else node["visits"]
        exploit = node["value"] / node["visits"]
        return exploit + c * math.sqrt(math.log(max(parent_visits, 1)) / node["visits"])

    def backpropagate(self, node_id: int, value: float, *, visits: int = 1) -> None:
        """Adds `value` and `visits` to the node and every ancestor."""
        for node in self.path(node_id):
            node["visits"] += visits
            node["value"] += value

    def visit(self, node_id: int, value: float) -> None:
        """Adds one visit of `value` to this node only (its own evaluation, not backed up)."""
        self.nodes[node_id]["visits"] += 1
        self.nodes[node_id]["value"] += value

    def add_virtual_loss(self, node_id: int) -> None:
        """Counts a visit of value 0 along the path while a selected node's result is pending, so
        the next concurrent selection prefers other branches."""
        self.backpropagate(node_id, 0.0)

    def revert_virtual_loss(self, node_id: int) -> None:
        self.backpropagate(node_id, 0.0, visits=-1)

    # ---- selection ------------------------------------------------------------------------------

    def is_open(self, node_id: int, expandable: Expandable, _memo: dict[int, bool] | None = None) -> bool:
        """Whether a selection can still end in this node or below it."""
        memo = {} if _memo is None else _memo
        if node_id not in memo:
            node = self.nodes[node_id]
            memo[node_id] = not node["terminal"] and (
                expandable(node) or any(self.is_open(c, expandable, memo) for c in node["children"])
            )
        return memo[node_id]

    def select(self, c: float, *, expandable: Expandable, widening: bool = False) -> int | None:
        """The node to expand next: from the root, descend to the open child of highest UCT (first
        on ties) until reaching a node that `expandable` accepts and that has no open child. With
        `widening`, an expandable node with fewer than ceil((visits + 1) ** 0.5) children is
        expanded before descending further. None when no node can be expanded."""
        memo: dict[int, bool] = {}
        if not self.is_open(0, expandable, memo):
            return None
        node = self.root
        while True:
            open_children = [ch for ch in node["children"] if self.is_open(ch, expandable, memo)]
            room = widening and len(node["children"]) < max_children(node["visits"])
            if expandable(node) and (not open_children or room):
                return node["id"]
            node = self.nodes[max(open_children, key=lambda ch: (self.uct(ch, c), -ch))]

    def best_child(self, node_id: int = 0) -> int | None:
        """The final pick among a node's children: most visits, ties broken by mean value, then by
        order. None when the node has no visited child (then the caller decides)."""
        visited = [ch for ch in self.nodes[node_id]["children"] if self.nodes[ch]["visits"] > 0]
        if not visited:
            return None
        return max(visited, key=lambda ch: (self.nodes[ch]["visits"], self.mean(ch) or 0.0, -ch))


def max_children(visits: int) -> int:
    """Progressive widening: how many children a node with `visits` visits may have."""
    return max(1, math.ceil((visits + 1) ** WIDENING_EXPONENT))


def _node(node_id: int, parent: int | None, depth: int, data: dict[str, Any], *, terminal: bool = False) -> TreeNode:
    return {
        "id": node_id,
        "parent": parent,
        "children": [],
        "depth": depth,
        "visits": 0,
        "value": 0.0,
        "terminal": terminal,
        "data": data,
    }


async def gather_survivors(calls: Iterable[Awaitable[T]]) -> list[T | UpstreamError]:
    """Runs independent expansions concurrently; an upstream failure comes back in its slot so the
    search continues with the survivors, while anything else (a budget cap, a bug) propagates."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, UpstreamError):
            raise r
    return results  # type: ignore[return-value]
