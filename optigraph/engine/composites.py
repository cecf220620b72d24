"""The graphs of composite expressions: pipelines (`a&b`) and parallel branches (`a|b`).

- `a&b&c` is a graph of stages; a stage runs once per answer of the stage before it, on the
  conversation whose last user turn says that answer (core/messages.py `replace_last_user`: every
  other turn, field and non-text part is kept). An answer that calls tools ends its line of the
  pipeline as it is: the client must run the tools before anything can follow. Stage runs are
  `Send` tasks, so they are concurrent and checkpointed one by one.
- `a|b` runs its branches concurrently (`Send`) and answers one choice per branch, in order.

Every graph takes the same input (messages, request, params, stream_choice) and writes `answers`,
`usage` and `decisions`, so composites nest. A leaf's `params` are its own; a composite's are keyed
by approach or plugin name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from optigraph.core.context import RunContext
from optigraph.core.messages import message_text, replace_last_user
from optigraph.core.state import Answer, Decision
from optigraph.core.usage import Usage, add_usage
from optigraph.engine.expression import (
    Approach,
    Node,
    Parallel,
    Pipeline,
    choice_count,
    to_text,
)

ChildFor = Callable[[Node], CompiledStateGraph]


def merge_outputs(a: dict[str, list[Answer]] | None, b: dict[str, list[Answer]] | None) -> dict[str, list[Answer]]:
    return {**(a or {}), **(b or {})}


class CompositeState(TypedDict, total=False):
    messages: list[dict[str, Any]]
    request: dict[str, Any]
    params: dict[str, dict[str, Any]]  # by approach or plugin name
    stream_choice: int | None
    branch: dict[str, Any]  # Send payload: which slot a child run fills
    outputs: Annotated[dict[str, list[Answer]], merge_outputs]  # "<node>/<slot>" -> answers
    answers: list[Answer]
    usage: Annotated[Usage, add_usage]
    notes: Annotated[list[str], operator.add]
    decisions: Annotated[list[Decision], operator.add]  # choices made at run time, from any depth


def child_input(
    state: dict[str, Any], child: Node, messages: list[dict[str, Any]], stream_choice: int | None
) -> dict[str, Any]:
    """A child graph's input: the conversation it works on, and its own (leaf) or all parameters."""
    params = state.get("params") or {}
    own = params.get(child.name, {}) if isinstance(child, Approach) else params
    return {"messages": messages, "request": state.get("request") or {}, "params": own, "stream_choice": stream_choice}


def child_output(out: dict[str, Any]) -> dict[str, Any]:
    """What a finished child graph hands its parent besides its answers."""
    return {"usage": out.get("usage"), "decisions": out.get("decisions") or []}


def build_pipeline(ast: Pipeline, child_for: ChildFor) -> StateGraph:
    graph = StateGraph(CompositeState, context_schema=RunContext)
    labels = labels_for(ast.stages, numbered=True)
    last = len(ast.stages) - 1
    for k, (stage, label) in enumerate(zip(ast.stages, labels)):
        graph.add_node(
            label, _child_runner(child_for(stage), stage, label, count=choice_count(stage), streams=k == last)
        )
        graph.add_node(f"{label}/done", _collect(label))
        graph.add_edge(label, f"{label}/done")
    graph.add_conditional_edges(START, _fan_out_first(labels[0]), [labels[0]])
    for k in range(1, len(labels)):
        graph.add_conditional_edges(f"{labels[k - 1]}/done", _fan_out_answers(labels[k]), [labels[k]])
    graph.add_edge(f"{labels[-1]}/done", END)
    return graph


def build_parallel(ast: Parallel, child_for: ChildFor) -> StateGraph:
    graph = StateGraph(CompositeState, context_schema=RunContext)
    labels = labels_for(ast.branches, numbered=False)
    offsets, total = [], 0
    for branch in ast.branches:
        offsets.append(total)
        total += choice_count(branch)
    for branch, label in zip(ast.branches, labels):
        graph.add_node(label, _child_runner(child_for(branch), branch, label, count=choice_count(branch), streams=True))
        graph.add_edge(label, "collect")
    graph.add_node("collect", _collect_all(labels))
    graph.add_conditional_edges(START, _fan_out_branches(labels, offsets), labels)
    graph.add_edge("collect", END)
    return graph


def labels_for(children: tuple[Node, ...], *, numbered: bool) -> list[str]:
    labels: list[str] = []
    for i, child in enumerate(children):
        text = to_text(child).replace("|", "+")  # '|' and ':' are reserved in LangGraph node names
        label = f"{i + 1}.{text}" if numbered else text
        if label in labels:
            label = f"{label}#{i + 1}"
        labels.append(label)
    return labels


def _child_runner(child: CompiledStateGraph, ast: Node, label: str, *, count: int, streams: bool):
    """A node that runs one child graph for the slot named in its Send payload."""

    async def run_child(state: CompositeState, config: RunnableConfig) -> dict[str, Any]:
        branch = state.get("branch") or {}
        slot = int(branch.get("slot", 0))
        if branch.get("carry") is not None:  # an answer that calls tools passes through unchanged
            return {"outputs": {f"{label}/{slot}": [branch["carry"]]}}
        base = state.get("stream_choice")
        stream_choice = base + int(branch.get("offset", slot * count)) if (streams and base is not None) else None
        out = await child.ainvoke(
            child_input(state, ast, branch.get("messages") or state["messages"], stream_choice), config
        )
        return {"outputs": {f"{label}/{slot}": out.get("answers") or []}, **child_output(out)}

    run_child.__name__ = f"run_{label}"
    return run_child


def _send_payload(state: CompositeState, **branch: Any) -> dict[str, Any]:
    return {
        "messages": state["messages"],
        "request": state.get("request") or {},
        "params": state.get("params") or {},
        "stream_choice": state.get("stream_choice"),
        "branch": branch,
    }


def _fan_out_first(label: str):
    def fan_out(state: CompositeState) -> list[Send]:
        return [Send(label, _send_payload(state, slot=0))]

    return fan_out


def _stage_answers(outputs: dict[str, list[Answer]], label: str) -> list[Answer]:
    prefix = f"{label}/"
    slots = sorted((int(k[len(prefix) :]), v) for k, v in outputs.items() if k.startswith(prefix))
    return [a for _, answers in slots for a in answers]


def _collect(label: str):
    async def collect(state: CompositeState) -> dict[str, Any]:
        return {"answers": _stage_answers(state.get("outputs") or {}, label)}

    collect.__name__ = f"collect_{label}"
    return collect


def _fan_out_answers(label: str):
    """Sends the next stage one run per answer of the stage before, that answer as the new query."""

    def fan_out(state: CompositeState) -> list[Send]:
        sends = []
        for slot, answer in enumerate(state.get("answers") or []):
            message = answer.get("message") or {}
            if message.get("tool_calls"):
                sends.append(Send(label, _send_payload(state, slot=slot, carry=answer)))
                continue
            messages = replace_last_user(state["messages"], message_text(message))
            sends.append(Send(label, _send_payload(state, slot=slot, messages=messages)))
        return sends

    return fan_out


def _fan_out_branches(labels: list[str], offsets: list[int]):
    def fan_out(state: CompositeState) -> list[Send]:
        return [Send(label, _send_payload(state, slot=0, offset=off)) for label, off in zip(labels, offsets)]

    return fan_out


def _collect_all(labels: list[str]):
    async def collect(state: CompositeState) -> dict[str, Any]:
        outputs = state.get("outputs") or {}
        return {"answers": [a for label in labels for a in _stage_answers(outputs, label)]}

    return collect
