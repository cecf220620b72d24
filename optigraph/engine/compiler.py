"""Compiles an approach expression (its AST) into one LangGraph graph.

- An approach is its own graph (from its ApproachSpec).
- `a&b` and `a|b` are composite graphs (engine/composites.py).
- A plugin wraps what follows it (engine/wrapping.py); `Compiler.compile` first rewrites the AST so
  that every plugin name becomes a `Plugin` node around the rest of its pipeline, or around the
  server's default expression when nothing follows (engine/expression.py `with_plugins`).

Compiled graphs are cached per canonical expression text in a bounded LRU owned by the Compiler;
child graphs (stages, branches, wrapped parts, routed expressions) in another, since a routing
plugin compiles expressions while runs are going.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from optigraph.engine.composites import build_parallel, build_pipeline
from optigraph.engine.expression import (
    Approach,
    Limits,
    Node,
    Parallel,
    Pipeline,
    Plugin,
    check_size,
    check_text,
    choice_count,
    names,
    parse,
    to_text,
    validate,
    with_plugins,
)
from optigraph.engine.mermaid import draw_mermaid
from optigraph.engine.node_spans import trace_nodes
from optigraph.engine.registry import Registry
from optigraph.engine.wrapping import Routed, build_wrap
from optigraph.telemetry.tracing import Tracing


@dataclass(frozen=True)
class CompiledExpression:
    text: str  # canonical expression, plugins' defaults written out
    ast: Node
    graph: CompiledStateGraph  # compiled with the server's checkpointer
    choices: int  # answers one run produces (when `dynamic`, as far as the compile-time shape says)
    names: tuple[str, ...]  # approaches and plugins it uses
    dynamic: bool = False  # a plugin may choose at run time what runs (so the choices are not known before)

    def input(
        self,
        *,
        messages: list[dict[str, Any]],
        request: dict[str, Any],
        params: dict[str, dict[str, Any]],
        stream_choice: int | None,
        private: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The graph's input state. `params` is keyed by approach or plugin name; `private`: the outer
        plugin's private state to start from (an edge plugin's, from its `admit`)."""
        own = params.get(self.ast.name, {}) if isinstance(self.ast, Approach) else params
        state = {"messages": messages, "request": request, "params": own, "stream_choice": stream_choice}
        if private:
            state["private"] = private
        return state

    def mermaid(self) -> str:
        return draw_mermaid(self.graph.get_graph(xray=True))


class Compiler:
    """Compiles expressions within `limits` and keeps the last `cache_size` compiled, by canonical text.

    Compiling costs about 3 ms per composite node and up to 30 ms per approach graph (mars), so a
    large expression takes a second or more: `compile_async` does a cache miss in a worker thread,
    off the event loop. The caches are shared by those threads, hence the lock."""

    def __init__(
        self,
        registry: Registry,
        checkpointer: BaseCheckpointSaver | None,
        *,
        cache_size: int = 256,
        default: str = "none",
        limits: Limits | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.registry = registry
        self.tracing = tracing  # when set, every node runs in a trace span (engine/node_spans.py)
        self.checkpointer = checkpointer
        self.cache_size = cache_size
        self.default = parse(default)  # what a plugin with nothing after it wraps
        self.limits = limits or Limits()
        self._cache: OrderedDict[str, CompiledExpression] = OrderedDict()
        self._children: OrderedDict[str, CompiledStateGraph] = OrderedDict()
        self._lock = threading.RLock()

    def resolve(self, ast: Node) -> Node:
        """`ast` with plugins wrapping what follows them (see engine/expression.py `with_plugins`).

        A plugin with nothing after it wraps the server's default, unless the expression is that
        default itself (a default of `readurls` alone wraps `none`, not itself again)."""
        default = Approach("none") if ast == self.default else self.default
        return with_plugins(ast, self.registry.plugin_names(), default)

    def cached(self, ast: Node) -> CompiledExpression | None:
        """The compiled expression if it is in the cache (and marks it recently used); `ast` resolved."""
        text = to_text(ast)
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
            return hit

    def compile(self, ast: Node) -> CompiledExpression:
        """The compiled graph of `ast`; ExpressionTooLarge (checked before any work) over the limits."""
        ast = self.resolve(ast)
        hit = self.cached(ast)
        if hit is not None:
            return hit
        check_size(ast, self.limits)
        return self._compile(ast)

    async def compile_async(self, ast: Node) -> CompiledExpression:
        """`compile`, with a cache miss compiled in a worker thread so the event loop keeps serving."""
        ast = self.resolve(ast)
        hit = self.cached(ast)
        if hit is not None:
            return hit
        check_size(ast, self.limits)  # a refusal needs no thread
        return await asyncio.to_thread(self._compile, ast)

    def _compile(self, ast: Node) -> CompiledExpression:
        text = to_text(ast)
        graph = self._build(ast).compile(checkpointer=self.checkpointer, name=text)
        used = tuple(dict.fromkeys(names(ast)))
        dynamic = any(n in self.registry.plugin_names() and self.registry.plugin(n).routes for n in used)
        compiled = CompiledExpression(
            text=text, ast=ast, graph=graph, choices=choice_count(ast), names=used, dynamic=dynamic
        )
        with self._lock:
            self._cache[text] = compiled
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    # Children are compiled without a checkpointer of their own: they inherit the parent's and
    # checkpoint under the parent task's namespace.
    def _child(self, ast: Node) -> CompiledStateGraph:
        text = to_text(ast)
        with self._lock:
            hit = self._children.get(text)
            if hit is not None:
                self._children.move_to_end(text)
                return hit
        child = self._build(ast).compile(name=text)
        with self._lock:
            self._children[text] = child
            if len(self._children) > self.cache_size:
                self._children.popitem(last=False)
        return child

    def _route(self, expression: str) -> Routed:
        """A routed expression, checked like a client's, as a child graph, with the default
        parameters of what it names (the client could not send any: it did not know the route)."""
        check_text(expression, self.limits, param=None)
        ast = parse(expression)
        validate(ast, self.registry.names())
        ast = self.resolve(ast)
        check_size(ast, self.limits, param=None)
        defaults = {name: self.registry.get(name).validate_params(None) for name in dict.fromkeys(names(ast))}
        return Routed(ast, self._child(ast), defaults)

    def _build(self, ast: Node) -> StateGraph:
        graph = self._build_plain(ast)
        return graph if self.tracing is None else trace_nodes(graph, self.tracing, approach=to_text(ast))

    def _build_plain(self, ast: Node) -> StateGraph:
        if isinstance(ast, Approach):
            return self.registry.approach(ast.name).build()
        if isinstance(ast, Plugin):
            return build_wrap(ast, self.registry.plugin(ast.name), self._child(ast.inner), self._route)
        if isinstance(ast, Pipeline):
            return build_pipeline(ast, self._child)
        assert isinstance(ast, Parallel)
        return build_parallel(ast, self._child)
