"""The graph of a plugin around what it wraps: `pre` -> run -> `post`.

    START -> <plugin>.pre -> <plugin>.run -> <plugin>.post -> END     (stages the plugin lacks are left out)

- `pre` (the plugin's stage) may return new `messages` (the conversation the wrapped part sees), a
  new `request` (the client's generation fields as the wrapped part gets them),
  `private` state (kept in this graph's state, so it is checkpointed and a resumed run's `post` has
  it), `notes`, and, for a routing plugin, `route`: the expression to run instead of the wrapped one.
- `run` runs the wrapped expression (or the routed one, compiled now and recorded as a decision) as
  a child graph. It streams when the wrapped part can and the plugin allows it: a plugin with a
  `post` stage streams only through its TextRewriter (e.g. placeholders restored as they arrive);
  without one the wrapped part answers whole and `post` rewrites it before it is sent.
- `post` (the plugin's stage) reads `answers` and `private` and returns the rewritten `answers`.

Each is a node of its own, so it is checkpointed and shown in the run's trace like any other step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from optigraph.core.context import RunContext
from optigraph.core.spec import PluginSpec
from optigraph.core.state import Answer, Decision
from optigraph.engine.composites import CompositeState, child_input, child_output
from optigraph.engine.expression import Node, Plugin, choice_count
from optigraph.errors import InvalidRequest, OptigraphError


class WrapState(CompositeState, total=False):
    private: dict[str, Any]  # the plugin's private state, from `pre`
    route: str | None  # the expression `pre` chose to run (routing plugins)
    route_reason: str


class Routed(NamedTuple):
    """A routed expression compiled: its tree, its child graph, and the default parameters of the
    approaches and plugins it names."""

    ast: Node
    graph: CompiledStateGraph
    defaults: dict[str, dict[str, Any]]


# Compiles a routed expression's text into a child graph (the compiler's, with its caches and checks).
RouteCompiler = Callable[[str], Routed]


def build_wrap(ast: Plugin, spec: PluginSpec, inner: CompiledStateGraph, route: RouteCompiler) -> StateGraph:
    graph = StateGraph(WrapState, context_schema=RunContext)
    steps: list[str] = []
    if spec.pre is not None:
        graph.add_node(f"{spec.name}.pre", _pre(spec))
        steps.append(f"{spec.name}.pre")
    graph.add_node(f"{spec.name}.run", _run(ast, spec, inner, route))
    steps.append(f"{spec.name}.run")
    if spec.post is not None:
        graph.add_node(f"{spec.name}.post", _post(spec))
        steps.append(f"{spec.name}.post")
    graph.add_edge(START, steps[0])
    for a, b in zip(steps, steps[1:]):
        graph.add_edge(a, b)
    graph.add_edge(steps[-1], END)
    return graph


def _view(state: WrapState, spec: PluginSpec, **extra: Any) -> dict[str, Any]:
    """What a plugin stage reads (core/state.py PluginState): its own parameters and private state."""
    return {
        "messages": state["messages"],
        "request": state.get("request") or {},
        "params": (state.get("params") or {}).get(spec.name, {}),
        "private": state.get("private") or {},
        "stream_choice": state.get("stream_choice"),
        **extra,
    }


def _stage_failed(spec: PluginSpec, stage: str, exc: Exception) -> OptigraphError:
    if isinstance(exc, OptigraphError):
        return exc
    return OptigraphError(f"plugin {spec.name!r} failed in its {stage} stage: {type(exc).__name__}: {exc}")


def _pre(spec: PluginSpec):
    assert spec.pre is not None
    stage = spec.pre

    async def pre(state: WrapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        try:
            out = await stage(_view(state, spec), runtime) or {}
        except Exception as exc:
            raise _stage_failed(spec, "pre", exc) from exc
        update: dict[str, Any] = {"private": out.get("private") or {}, "notes": list(out.get("notes") or [])}
        if out.get("messages") is not None:
            update["messages"] = out["messages"]
        if out.get("request") is not None:  # the generation fields the wrapped part gets
            update["request"] = out["request"]
        if out.get("route"):
            if not spec.routes:
                raise OptigraphError(f"plugin {spec.name!r} routed to {out['route']!r} without declaring routes=True")
            update["route"], update["route_reason"] = str(out["route"]), str(out.get("reason") or "")
        if out.get("usage"):
            update["usage"] = out["usage"]
        return update

    pre.__name__ = f"{spec.name}_pre"
    return pre


def _run(ast: Plugin, spec: PluginSpec, inner: CompiledStateGraph, route: RouteCompiler):
    count = choice_count(ast.inner)

    async def run(state: WrapState, config: RunnableConfig, runtime: Runtime[RunContext]) -> dict[str, Any]:
        child, child_ast, decisions, params = inner, ast.inner, [], state.get("params") or {}
        if state.get("route"):
            try:
                child_ast, child, defaults = route(state["route"])
                params = {**defaults, **params}
            except InvalidRequest as exc:
                raise InvalidRequest(
                    f"plugin {spec.name!r} routed to an invalid expression: {exc.message}", code="invalid_route"
                ) from exc
            decisions.append(
                Decision(
                    node=f"{spec.name}.run",
                    plugin=spec.name,
                    route=state["route"],
                    reason=state.get("route_reason") or "",
                )
            )
        stream_choice = _stream_choice(state, spec, runtime, count, routed=bool(decisions))
        out = await child.ainvoke(
            child_input({**state, "params": params}, child_ast, state["messages"], stream_choice), config
        )
        result = child_output(out)
        result["answers"] = out.get("answers") or []
        result["decisions"] = decisions + result["decisions"]
        return result

    run.__name__ = f"{spec.name}_run"
    return run


def _stream_choice(
    state: WrapState, spec: PluginSpec, runtime: Runtime[RunContext], count: int, *, routed: bool
) -> int | None:
    """The first choice the wrapped part may stream to, or None when it must answer whole."""
    base = state.get("stream_choice")
    sink = runtime.context.sink
    if base is None or sink is None or routed:
        return None  # a routed expression's choice count is only known now: it answers whole
    if spec.post is None:
        return base
    if spec.stream is None:
        return None
    for choice in range(base, base + count):
        rewriter = spec.stream(state.get("request") or {}, state.get("private") or {}, runtime.context)
        if rewriter is None:
            return None
        sink.add_rewriter(choice, rewriter)
    return base


def _post(spec: PluginSpec):
    assert spec.post is not None
    stage = spec.post

    async def post(state: WrapState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        answers: list[Answer] = state.get("answers") or []
        try:
            out = await stage(_view(state, spec, answers=answers), runtime) or {}
        except Exception as exc:
            raise _stage_failed(spec, "post", exc) from exc
        update: dict[str, Any] = {"answers": out.get("answers", answers), "notes": list(out.get("notes") or [])}
        if out.get("usage"):
            update["usage"] = out["usage"]
        return update

    post.__name__ = f"{spec.name}_post"
    return post
