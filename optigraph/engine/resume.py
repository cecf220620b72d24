"""Resuming a stored run from its checkpoints, and forking a new run from one of them.

Resume: the run is rebuilt from what was stored with it, never selected again: its expression and
its spec (the model it was routed by, its cleaned messages, forwarded fields, validated parameters
and thread count; engine/runner.py `run_spec`). So a change of the server's default approach or
default model does not change what a stored run runs, and a fork (one thread) resumes as the fork.
(Runs stored before specs existed are rebuilt from their request, with their stored expression.)
A new LLM client records its calls on the same run id, and each unfinished thread continues with
`graph.ainvoke(None, thread)`. LangGraph re-runs only the tasks whose writes were not stored: a
finished pipeline stage, a finished parallel branch and a finished step inside a child graph (its
own checkpoints, under the parent task's namespace) are not run again, so the LLM calls they made
are not repeated.

Usage of a resumed run (core/usage.py): the sum over the upstream calls stored for the run before the
resume (read from `upstream_calls`, after this server's pending records are written) plus every call
the resume makes. So the stored run's usage is always the sum over its `upstream_calls` rows; calls
a crashed server made but never wrote are not counted (nor shown), since nothing says they happened.

Which runs can be resumed: a run with checkpoints (not a lone `none`, which has none) that is not
completed: failed, cancelled (its client went), interrupted (its server shut down) or `running`
(left so when its server died). A resume holds a lease on the run in the database (memory/leases.py),
renewed while it executes and released when it ends, so a second resume of the same run, on this
server or another sharing the database, is refused (409) while the first is live, and succeeds
once the first has ended or its lease has expired (`run_lease_s`, when its server died). A run
that is still `running` on the server that started it holds no lease: resume a `running` run only
when that server is gone.

Fork: a new run (new id, `parent_id` = the source) whose single thread starts from one checkpoint
of the source thread: the checkpoint's state, with the patch applied, is written to the new thread
as if produced by the node that produced the checkpoint (`aupdate_state(..., as_node=...)`), and the
graph continues from there (`ainvoke(None)`). Only the steps after the fork point run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from optigraph.core.usage import usage_from_rows
from optigraph.engine.expression import parse
from optigraph.engine.runner import ChatResult, Prepared, Runner, answer_choices, run_usage
from optigraph.errors import InvalidRequest, NotFound, OptigraphError
from optigraph.memory.leases import release_lease, renew_lease, take_lease
from optigraph.memory.queries import get_run
from optigraph.memory.records import RunRecord, RunResult

log = logging.getLogger(__name__)


class RunNotResumable(OptigraphError):
    """The run exists but cannot be resumed or forked in its present state (409)."""

    status = 409
    type = "invalid_request_error"
    code = "run_not_resumable"


async def _stored(db: Any, run_id: str, tenant: str | None) -> dict[str, Any]:
    """The stored run of `tenant` (any tenant's when None): another tenant's run is not found."""
    row = await get_run(db, run_id, tenant=tenant)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    if not row.get("checkpointed") and row.get("expression") != "none" and row.get("spec") is None:
        raise RunNotResumable(
            f"run {run_id} was stored without its prompts (the server keeps no prompt text): "
            "it cannot be resumed or forked; send the request again instead"
        )
    if not row.get("checkpointed") or row.get("expression") == "none":
        raise RunNotResumable(
            f"run {run_id} is a passthrough (`none`) run: a single upstream call has no "
            "checkpoint to continue from; send the request again instead"
        )
    if not isinstance(row.get("request"), dict):
        raise RunNotResumable(f"run {run_id} has no stored request to rebuild it from")
    return row


async def _rebuild(runner: Runner, row: dict[str, Any], *, run_id: str, client_key: str | None) -> Prepared:
    """The run's Prepared: its stored expression and spec, whatever the server's defaults are now."""
    spec = row.get("spec")
    try:
        if not isinstance(spec, dict):
            return await _rebuild_from_request(runner, row, run_id=run_id, client_key=client_key)
        body: dict[str, Any] = row["request"]
        compiled = await runner.compiler.compile_async(parse(row["expression"]))
        llm = runner.llm_for(
            spec["route"],
            run_id=run_id,
            client_key=client_key,
            limits=body.get("optigraph"),
            proxied="proxy" in compiled.names,
        )
        stored = spec.get("params") or {}
        params = {name: runner.registry.get(name).validate_params(stored.get(name)) for name in compiled.names}
    except InvalidRequest as exc:  # e.g. an approach this server no longer has
        raise RunNotResumable(f"run {run_id} cannot be rebuilt on this server: {exc.message}") from None
    record = RunRecord(
        id=run_id,
        expression=compiled.text,
        model=llm.model,
        request=body,
        checkpointed=True,
        user=body.get("user"),
        spec=spec,
        tenant=row.get("tenant"),
    )
    edge, private = runner.edge_plugin(compiled), dict(spec.get("private") or {})
    if edge is not None and edge.release is not None and private:
        # the edge plugin must still open its private state (privacy: the same privacy_key), before
        # anything runs again: released with no answers, it raises what it would raise at the end
        edge.release([], private, runner.settings)
    return Prepared(
        run_id=run_id,
        expression=compiled.text,
        model=llm.model,
        messages=spec["messages"],
        request=spec["request"],
        params=params,
        n=int(spec["n"]),
        stream=False,
        include_usage=False,
        llm=llm,
        compiled=compiled,
        record=record,
        started=time.perf_counter(),
        edge=edge,
        private=private,
    )


async def _rebuild_from_request(
    runner: Runner, row: dict[str, Any], *, run_id: str, client_key: str | None
) -> Prepared:
    """A run stored before specs existed: its request, prepared again, running its stored expression."""
    prep = await runner.prepare(dict(row["request"]), client_key=client_key, run_id=run_id, tenant=row.get("tenant"))
    if prep.compiled is None or prep.expression != row["expression"]:
        prep.compiled = await runner.compiler.compile_async(parse(row["expression"]))
        prep.expression = prep.compiled.text
    prep.stream = False
    return prep


def _mark_running(runner: Runner, run_id: str) -> None:
    runner.recorder.run_finished(
        run_id,
        RunResult(
            status="running",
            finished_at=None,  # type: ignore[arg-type]
            latency_ms=None,
            usage={},
            error=None,
        ),
    )  # type: ignore[arg-type]


async def resume_run(
    runner: Runner, run_id: str, *, db: Any, client_key: str | None = None, tenant: str | None = None
) -> ChatResult:
    """Continues run `run_id` of `tenant` (any tenant's when None) from its last checkpoints."""
    await runner.recorder.flush()  # what this server recorded of the run is read back below
    row = await _stored(db, run_id, tenant)
    if row["status"] == "completed":
        raise RunNotResumable(f"run {run_id} has already completed; fork it to run part of it again")
    prep = await _rebuild(runner, row, run_id=run_id, client_key=client_key)
    prep.prior = usage_from_rows(row["upstream_calls"])
    async with _lease(runner, db, run_id):
        with runner.tracking(prep):
            _mark_running(runner, run_id)
            try:
                answers, usage = await runner.run_graph(prep, sink=None, resume=True)
            except asyncio.CancelledError as exc:
                runner.record_failure(prep, exc)
                raise runner.stop_error(prep) if prep.stop_reason else exc from None
            except BaseException as exc:
                runner.record_failure(prep, exc)
                raise
        response = runner.response_body(prep, answer_choices(answers), usage, {})
        runner.record_success(prep, usage, response)
        response = {**response, "choices": answer_choices(runner.client_answers(prep, answers))}
        return ChatResult(run_id=run_id, response=response)


@contextlib.asynccontextmanager
async def _lease(runner: Runner, db: Any, run_id: str) -> AsyncIterator[None]:
    """Holds the run's lease for the block (renewed meanwhile), or raises RunNotResumable (409).

    The run's final record is written before the lease is released, so whoever takes it next reads
    how the run ended."""
    ttl = runner.settings.run_lease_s
    if not await take_lease(db, run_id, owner=runner.owner, now=runner.clock(), ttl_s=ttl):
        raise RunNotResumable(
            f"run {run_id} is being executed right now (by this server or another sharing its "
            "database); try again once that has ended",
            code="run_in_progress",
        )
    renewal = asyncio.create_task(_renew(runner, db, run_id, ttl))
    try:
        yield
    finally:
        renewal.cancel()
        await runner.recorder.flush()
        await release_lease(db, run_id, owner=runner.owner)


async def _renew(runner: Runner, db: Any, run_id: str, ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            if not await renew_lease(db, run_id, owner=runner.owner, now=runner.clock(), ttl_s=ttl):
                log.warning("run %s: its lease was lost (expired and taken by another server)", run_id)
                return
        except Exception:  # the database is unreachable for now: try again at the next beat
            log.exception("run %s: renewing its lease failed", run_id)


async def fork_run(
    runner: Runner,
    run_id: str,
    *,
    db: Any,
    client_key: str | None = None,
    checkpoint_id: str | None = None,
    thread: str | None = None,
    patch: dict[str, Any] | None = None,
    new_id: str | None = None,
    tenant: str | None = None,
) -> ChatResult:
    """A new run (id `new_id`, default: a fresh one) from one checkpoint of run `run_id` of `tenant`
    (any tenant's when None); the new run is the same tenant's."""
    row = await _stored(db, run_id, tenant)
    new_id = new_id or uuid.uuid4().hex
    prep = await _rebuild(runner, row, run_id=new_id, client_key=client_key)
    assert prep.compiled is not None
    graph = prep.compiled.graph
    if thread is None:
        thread = run_id if prep.n == 1 else f"{run_id}.0"
    elif thread != run_id and not (thread.startswith(f"{run_id}.") and thread[len(run_id) + 1 :].isdigit()):
        raise InvalidRequest(
            f"thread {thread!r} is not a thread of run {run_id} (its threads are {run_id} "
            f"for one choice, {run_id}.0, {run_id}.1, ... for n > 1)",
            param="thread",
        )
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
        raise InvalidRequest(f"patch names state values the graph does not have: {', '.join(unknown)}", param="patch")
    values = {**snapshot.values, **patch}
    producer = await _producer(graph, snapshot)

    # The new run: one thread, the source's request, linked to its parent; resumed as such.
    prep.n = 1
    prep.record.parent_id = run_id
    if "request" in patch and isinstance(patch["request"], dict):
        prep.request = patch["request"]
    prep.record.spec = {**(prep.record.spec or {}), "n": 1, "request": prep.request}
    prep.record.request = {
        **row["request"],
        "optigraph_fork": {
            "parent_id": run_id,
            "thread": thread,
            "checkpoint_id": snapshot.config["configurable"].get("checkpoint_id"),
            "patch": patch,
        },
    }
    runner.recorder.run_started(prep.record)
    config = {"configurable": {"thread_id": new_id}}
    ctx = runner.context(new_id, prep.llm, None, tenant=prep.record.tenant)
    try:
        with runner.tracking(prep):
            if producer is None:  # the input checkpoint: start from the (patched) input
                out = await graph.ainvoke(values, config, context=ctx, durability="sync")
            else:
                await graph.aupdate_state(config, values, as_node=producer)
                out = await graph.ainvoke(None, config, context=ctx, durability="sync")
    except asyncio.CancelledError as exc:
        runner.record_failure(prep, exc)
        raise runner.stop_error(prep) if prep.stop_reason else exc from None
    except BaseException as exc:
        runner.record_failure(prep, exc)
        raise
    answers = out.get("answers") or []
    usage = run_usage(prep)  # this run's calls, not those copied from the parent
    if prep.edge is not None and out.get("private"):
        prep.private = out["private"]
    response = runner.response_body(prep, answer_choices(answers), usage, {})
    response["optigraph"]["parent_id"] = run_id
    runner.record_success(prep, usage, response)
    response = {**response, "choices": answer_choices(runner.client_answers(prep, answers))}
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
