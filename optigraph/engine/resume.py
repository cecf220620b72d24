"""Resuming a stored run from its checkpoints, and forking a new run from one of them.

Resume: the run is rebuilt from its stored request (same expression, model and parameters) with a
new LLM client that records its calls on the same run id, and each unfinished thread continues with
`graph.ainvoke(None, thread)`. LangGraph re-runs only the tasks whose writes were not stored: a
finished pipeline stage, a finished parallel branch and a finished step inside a child graph (its
own checkpoints, under the parent task's namespace) are not run again, so the LLM calls they made
are not repeated. The answer's usage is the graph state's, so it counts the calls made before the
interruption too.

Which runs can be resumed: a run with checkpoints (not a lone `none`, which has none) that is not
completed. A run is left `running` when its server died (nothing marks it at the next start), so
`running` runs can be resumed; the server refuses one that it is itself resuming right now, but it
cannot know whether another server is still executing it: resume a `running` run only when the
server that started it is gone.

Fork: a new run (new id, `parent_id` = the source) whose single thread starts from one checkpoint
of the source thread: the checkpoint's state, with the patch applied, is written to the new thread
as if produced by the node that produced the checkpoint (`aupdate_state(..., as_node=...)`), and the
graph continues from there (`ainvoke(None)`). Only the steps after the fork point run.
"""

from __future__ import annotations

import uuid
from typing import Any

from optigraph.core.usage import add_usage, empty_usage
from optigraph.engine.expression import parse
from optigraph.engine.runner import ChatResult, Prepared, Runner, answer_choices
from optigraph.errors import InvalidRequest, NotFound, OptigraphError
from optigraph.memory.queries import get_run
from optigraph.memory.records import RunResult


class RunNotResumable(OptigraphError):
    """The run exists but cannot be resumed or forked in its present state (409)."""

    status = 409
    type = "invalid_request_error"
    code = "run_not_resumable"


async def _stored(db: Any, run_id: str) -> dict[str, Any]:
    row = await get_run(db, run_id)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    if not row.get("checkpointed") or row.get("expression") == "none":
        raise RunNotResumable(f"run {run_id} is a passthrough (`none`) run: a single upstream call has no "
                              "checkpoint to continue from; send the request again instead")
    if not isinstance(row.get("request"), dict):
        raise RunNotResumable(f"run {run_id} has no stored request to rebuild it from")
    return row


async def _rebuild(runner: Runner, row: dict[str, Any], *, run_id: str, client_key: str | None) -> Prepared:
    """The run's Prepared, from its stored request, running the stored expression."""
    prep = await runner.prepare(dict(row["request"]), client_key=client_key, run_id=run_id)
    if prep.compiled is None or prep.expression != row["expression"]:
        prep.compiled = await runner.compiler.compile_async(parse(row["expression"]))
        prep.expression = prep.compiled.text
    prep.stream = False
    return prep


def _mark_running(runner: Runner, run_id: str) -> None:
    runner.recorder.run_finished(run_id, RunResult(status="running", finished_at=None,  # type: ignore[arg-type]
                                                   latency_ms=None, usage={}, error=None))  # type: ignore[arg-type]


async def resume_run(runner: Runner, run_id: str, *, db: Any, client_key: str | None = None) -> ChatResult:
    row = await _stored(db, run_id)
    if row["status"] == "completed":
        raise RunNotResumable(f"run {run_id} has already completed; fork it to run part of it again")
    if run_id in runner.resuming:
        raise RunNotResumable(f"run {run_id} is being resumed on this server right now")
    prep = await _rebuild(runner, row, run_id=run_id, client_key=client_key)
    runner.resuming.add(run_id)
    try:
        _mark_running(runner, run_id)
        try:
            answers, usage = await runner.run_graph(prep, sink=None, resume=True)
        except BaseException as exc:
            runner.record_failure(prep, exc)
            raise
        response = runner.response_body(prep, answer_choices(answers), usage, {})
        runner.record_success(prep, usage, response)
        return ChatResult(run_id=run_id, response=response)
    finally:
        runner.resuming.discard(run_id)


async def fork_run(runner: Runner, run_id: str, *, db: Any, client_key: str | None = None,
                   checkpoint_id: str | None = None, thread: str | None = None,
                   patch: dict[str, Any] | None = None, new_id: str | None = None) -> ChatResult:
    """A new run (id `new_id`, default: a fresh one) from one checkpoint of run `run_id`."""
    row = await _stored(db, run_id)
    new_id = new_id or uuid.uuid4().hex
    prep = await _rebuild(runner, row, run_id=new_id, client_key=client_key)
    assert prep.compiled is not None
    graph = prep.compiled.graph
    if thread is None:
        thread = run_id if prep.n == 1 else f"{run_id}.0"
    elif thread != run_id and not (thread.startswith(f"{run_id}.") and thread[len(run_id) + 1:].isdigit()):
        raise InvalidRequest(f"thread {thread!r} is not a thread of run {run_id} (its threads are {run_id} "
                             f"for one choice, {run_id}.0, {run_id}.1, ... for n > 1)", param="thread")
    source: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id:
        source["checkpoint_id"] = checkpoint_id
    snapshot = await graph.aget_state({"configurable": source})
    if not snapshot.values and not snapshot.next:
        what = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "checkpoint"
        raise NotFound(f"run {run_id} has no {what} on thread {thread!r}", param="checkpoint_id")
    patch = dict(patch or {})
    channels = set(graph.stream_channels_list) | set(graph.channels)
    unknown = sorted(k for k in patch if k not in channels or k.startswith("__") or ":" in k)
    if unknown:
        raise InvalidRequest(f"patch names state values the graph does not have: {', '.join(unknown)}",
                             param="patch")
    values = {**snapshot.values, **patch}
    producer = await _producer(graph, snapshot)

    # The new run: one thread, the source's request, linked to its parent.
    prep.n = 1
    prep.record.parent_id = run_id
    if "request" in patch and isinstance(patch["request"], dict):
        prep.request = patch["request"]
    prep.record.request = {**row["request"], "optigraph_fork": {"parent_id": run_id, "thread": thread,
                                                                 "checkpoint_id": snapshot.config["configurable"].get("checkpoint_id"),
                                                                 "patch": patch}}
    runner.recorder.run_started(prep.record)
    config = {"configurable": {"thread_id": new_id}}
    ctx = runner.context(new_id, prep.llm, None)
    try:
        if producer is None:  # the input checkpoint: start from the (patched) input
            out = await graph.ainvoke(values, config, context=ctx, durability="sync")
        else:
            await graph.aupdate_state(config, values, as_node=producer)
            out = await graph.ainvoke(None, config, context=ctx, durability="sync")
    except BaseException as exc:
        runner.record_failure(prep, exc)
        raise
    answers = out.get("answers") or []
    usage = add_usage(empty_usage(), prep.llm.answered)  # this run's calls, not those copied from the parent
    response = runner.response_body(prep, answer_choices(answers), usage, {})
    response["optigraph"]["parent_id"] = run_id
    runner.record_success(prep, usage, response)
    return ChatResult(run_id=new_id, response=response)


async def _producer(graph: Any, snapshot: Any) -> str | None:
    """The node whose writes made this checkpoint; None for the input checkpoint."""
    meta = snapshot.metadata or {}
    if meta.get("source") == "input" or snapshot.parent_config is None:
        return None
    parent = await graph.aget_state(snapshot.parent_config)
    names = [t.name for t in parent.tasks if not t.name.startswith("__")]
    if not names:
        return None
    return names[-1]
