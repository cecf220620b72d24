"""Response bodies of the run and approach routes, as pydantic models: they validate what
`engine/inspection.py` returns (plain data) and describe it in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int
    calls: int


class Task(BaseModel):
    id: str
    name: str = Field(description="the node that ran")
    kind: str = Field(description='"pull" (an edge triggered it) or "push" (a Send started it)')
    status: str = Field(description="done | error | pending (never finished: the run stopped during this step)")
    input: Any = Field(None, description="a push task's Send payload; a pull task reads the state before the step")
    writes: dict[str, Any] | None = Field(None, description="what it returned, by state key")
    error: Any = None
    checkpoint_ns: str | None = Field(None, description="the child graph's namespace, when the task ran one")
    steps: list[Step] = Field(default_factory=list, description="the child graph's steps")


class Step(BaseModel):
    step: int = Field(description="LangGraph's step number of the checkpoint this step produced")
    checkpoint_ns: str = Field(description='"" for the run\'s own graph')
    checkpoint_id: str | None = Field(description="the checkpoint after the step (None while unfinished)")
    parent_checkpoint_id: str = Field(description="the checkpoint it started from: where a resume or fork begins")
    started_at: str | None
    finished_at: str | None
    status: str = Field(description="done | incomplete")
    tasks: list[Task]
    changes: dict[str, Any] | None = Field(description="state keys whose value the step changed, with their new value")


class Thread(BaseModel):
    thread_id: str
    checkpoint_id: str | None = Field(description="the latest checkpoint")
    next: list[str] = Field(description="nodes still to run; empty when the graph finished")
    steps: list[Step]
    decisions: list[dict[str, Any]] = Field(
        default_factory=list, description="what plugins chose while the run ran (routes), outermost first"
    )
    error: str | None = Field(description="why the steps could not be read")


class RunSummary(BaseModel):
    object: str
    id: str
    parent_id: str | None
    expression: str
    model: str
    status: str
    checkpointed: bool
    user: str | None
    created_at: str | None
    finished_at: str | None
    latency_ms: float | None
    usage: Usage
    error: Any


class UpstreamCall(BaseModel):
    id: int | None
    node: str
    backend: str
    model: str
    attempt: int
    status: str
    error: str | None
    started_at: str | None
    latency_ms: float
    messages: list[Any]
    parameters: dict[str, Any]
    choices: list[Any] = Field(description="what came back: text, finish_reason (tool_calls when any)")
    usage: Usage


class Totals(BaseModel):
    calls: int
    failed_calls: int
    retried_calls: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    total_tokens: int
    upstream_latency_ms: float
    steps: int
    tasks: int
    by_node: dict[str, dict[str, Any]]


class GraphView(BaseModel):
    mermaid: str | None
    choices: int | None
    error: str | None


class RunDetail(RunSummary):
    request: Any
    response: Any
    graph: GraphView
    threads: list[Thread]
    upstream_calls: list[UpstreamCall]
    totals: Totals


class RunList(BaseModel):
    object: str
    data: list[RunSummary]
    has_more: bool
    next_cursor: str | None


class RunDeleted(BaseModel):
    id: str
    object: str = "run.deleted"
    deleted: bool


class ApproachInfo(BaseModel):
    object: str
    kind: str = Field(description="approach or plugin")
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON schema of its parameters")
    defaults: dict[str, Any]
    calls: str = Field(description="upstream calls as a formula over the parameters: the most it makes")
    rounds: str = Field(description="dependent rounds, a formula over the parameters")
    expected_calls: str = Field(description="calls when nothing fails (fewer than `calls` where it stops early)")
    default_calls: int | None = Field(description="the formulas at the default parameters")
    default_rounds: int | None
    default_expected_calls: int | None
    needs: list[str]
    papers: list[str]
    streams_final: bool
    stages: list[str] | None = Field(default=None, description="plugins: their stages, pre and/or post")
    streams_through: bool | None = Field(
        default=None, description="plugins: a post stage that still lets the wrapped part stream"
    )
    routes: bool | None = Field(default=None, description="plugins: may choose at run time what runs inside them")


class ApproachList(BaseModel):
    object: str
    data: list[ApproachInfo]


class ExpressionInfo(BaseModel):
    object: str
    expression: str = Field(description="canonical text")
    choices: int
    mermaid: str
    approaches: list[ApproachInfo] = Field(description="each approach it uses, once")
    cost: dict[str, int | None] = Field(description="calls, dependent rounds and expected calls at the defaults")


Task.model_rebuild()
