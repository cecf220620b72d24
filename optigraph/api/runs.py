"""GET /v1/runs and GET /v1/runs/{run_id}: stored runs, their steps and upstream calls.
POST /v1/runs/{run_id}/resume and /fork: continue an interrupted run, or start a new run from one of
its checkpoints (engine/resume.py). DELETE /v1/runs/{run_id}: delete a run and all stored for it.

Every route sees the caller's tenant's runs only: another tenant's run is a 404, as if it did not
exist. Reading needs the `runs:read` scope; resuming, forking and deleting `runs:write`, and
resuming or forking also the scopes of the run's approaches (api/scopes.py)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from optigraph.api import schemas
from optigraph.api.access import Caller, Principal, caller, principal
from optigraph.api.disconnect import unless_client_goes
from optigraph.api.errors import error_response
from optigraph.api.scopes import RUNS_READ, RUNS_WRITE, require, require_approaches
from optigraph.engine import inspection, resume
from optigraph.engine.expression import names, parse
from optigraph.errors import InvalidRequest, NotFound, OptigraphError, RunCancelled
from optigraph.memory.queries import MAX_LIMIT, get_run, page_runs
from optigraph.memory.retention import delete_run

# Every route here needs an authenticated caller when the server requires one.
router = APIRouter(tags=["runs"], dependencies=[Depends(caller)])

RunId = Annotated[
    str, Path(description="The run id (the `optigraph.run_id` of a response, or the x-optigraph-run-id header)")
]


async def load_run(request: Request, run_id: str, tenant: str) -> dict[str, Any]:
    """The tenant's stored run with its upstream calls, or a 404 (another tenant's run too)."""
    row = await get_run(request.app.state.db, run_id, tenant=tenant)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    return row


@router.get("/v1/runs", summary="Stored runs, newest first", response_model=schemas.RunList)
async def list_runs(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    status: Annotated[
        str | None, Query(description="running, completed, failed, cancelled or interrupted (another value is a 400)")
    ] = None,
    approach: Annotated[str | None, Query(description="the run's approach expression, e.g. bon&re2")] = None,
    model: Annotated[str | None, Query(description="the upstream model (approach prefix removed)")] = None,
    created_after: Annotated[datetime | None, Query(description="ISO 8601; UTC when no offset is given")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601; UTC when no offset is given")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    after: Annotated[str | None, Query(description="the `next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    require(who.scopes, RUNS_READ, "listing runs")
    page = await page_runs(
        request.app.state.db,
        status=status,
        expression=inspection.approach_filter(approach),
        model=model,
        created_after=created_after,
        created_before=created_before,
        after=after,
        limit=limit,
        tenant=who.tenant,
    )
    return inspection.run_list(page.runs, has_more=page.has_more)


@router.get(
    "/v1/runs/{run_id}",
    summary="One run: its graph, steps, upstream calls and totals",
    response_model=schemas.RunDetail,
)
async def show_run(
    request: Request,
    who: Annotated[Principal, Depends(principal)],
    run_id: RunId,
    max_chars: Annotated[
        int, Query(ge=0, description="cut strings longer than this; 0 keeps them whole")
    ] = inspection.MAX_CHARS,
) -> dict[str, Any]:
    require(who.scopes, RUNS_READ, "reading a run")
    row = await load_run(request, run_id, who.tenant)
    return await inspection.run_detail(row, request.app.state.runner.compiler, max_chars=max_chars or None)


class ForkRequest(BaseModel):
    checkpoint_id: str | None = Field(
        None,
        description="the checkpoint to start from (a step's `checkpoint_id` "
        "in GET /v1/runs/{id}); default: the thread's latest",
    )
    thread: str | None = Field(
        None,
        description="the source thread: the run id, or `<id>.<i>` for choice i of an n > 1 run (default: the first)",
    )
    patch: dict[str, Any] | None = Field(
        None, description='state values to overwrite at that checkpoint, e.g. {"request": {"temperature": 0.2}}'
    )


async def _admitted(request: Request, run_id: str, who: Principal, call: Any, *, answer_id: str) -> Response:
    """Checks the caller may run the stored run `run_id` again (its tenant's, with the scopes of its
    approaches), admits it under the tenant's limits, and answers with `_answer` (for `answer_id`)."""
    require(who.scopes, RUNS_WRITE, "resuming or forking a run")
    row = await load_run(request, run_id, who.tenant)
    try:
        used = names(parse(row["expression"]))
    except InvalidRequest:  # a stored expression this server cannot read: the resume says so
        used = []
    require_approaches(who.scopes, request.app.state.registry, [n for n in used if n in request.app.state.registry])
    admission = await request.app.state.run_slots.admit(who)
    try:
        return await _answer(request, answer_id, call)
    finally:
        await admission.release()


def _answer(request: Request, run_id: str, call) -> Any:
    """The response for a resume or fork whose outcome is stored under `run_id` (for a fork: the
    new run's id). A failure names that run in its header only if the run was stored: a fork
    refused before it started (no such checkpoint, a bad patch) made no run."""
    runner = request.app.state.runner
    request_recorder = runner.recorder

    async def answer() -> Response:
        recorder = request_recorder
        task = asyncio.ensure_future(call())
        try:  # a client that goes cancels the resumed or forked run (which stays resumable)
            result = await unless_client_goes(request, task, lambda: runner.cancel_task(task, "cancelled"))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this handler itself is being cancelled
            # the work was cancelled before its run started: nothing ran, nobody is listening
            exc = RunCancelled(f"the request for run {run_id} was cancelled: its client disconnected")
            return error_response(request, exc)
        except OptigraphError as exc:
            await recorder.flush()  # what is stored matches the answer before it is sent
            stored = await get_run(request.app.state.db, run_id) is not None
            headers = {"x-optigraph-run-id": run_id} if stored else None
            return error_response(request, exc, headers)
        await recorder.flush()
        headers = {
            "x-optigraph-run-id": result.run_id,
            "x-optigraph-upstream-calls": str(result.response["optigraph"]["upstream_calls"]),
        }
        return Response(orjson.dumps(result.response), media_type="application/json", headers=headers)

    return answer()


@router.post(
    "/v1/runs/{run_id}/resume",
    summary="Continue an interrupted run from its last checkpoint",
    responses={
        200: {"description": "The run's chat.completion (non-streaming)"},
        404: {"description": "No such run"},
        409: {"description": "The run cannot be resumed (passthrough, completed, being executed)"},
    },
)
async def resume_run(request: Request, run_id: RunId, who: Annotated[Caller, Depends(caller)]) -> Response:
    runner = request.app.state.runner
    call = functools.partial(
        resume.resume_run,
        runner,
        run_id,
        db=request.app.state.db,
        client_key=who.forward_key,
        tenant=who.principal.tenant,
    )
    return await _admitted(request, run_id, who.principal, call, answer_id=run_id)


@router.post(
    "/v1/runs/{run_id}/fork",
    summary="A new run from one checkpoint of a run, with a state patch",
    responses={
        200: {"description": "The new run's chat.completion; `optigraph.parent_id` is the source"},
        404: {"description": "No such run or checkpoint"},
        409: {"description": "The run has no checkpoints (passthrough)"},
    },
)
async def fork_run(
    request: Request,
    who: Annotated[Caller, Depends(caller)],
    run_id: RunId,
    body: Annotated[ForkRequest | None, Body()] = None,
) -> Response:
    runner = request.app.state.runner
    body = body or ForkRequest()
    new_id = uuid.uuid4().hex  # chosen here so that a failed fork's answer names the new run, not its source
    call = functools.partial(
        resume.fork_run,
        runner,
        run_id,
        db=request.app.state.db,
        client_key=who.forward_key,
        checkpoint_id=body.checkpoint_id,
        thread=body.thread,
        patch=body.patch,
        new_id=new_id,
        tenant=who.principal.tenant,
    )
    return await _admitted(request, run_id, who.principal, call, answer_id=new_id)


@router.delete(
    "/v1/runs/{run_id}",
    summary="Delete a run with its upstream calls, checkpoints and conversation memory",
    response_model=schemas.RunDeleted,
    responses={404: {"description": "No such run"}, 409: {"description": "The run is executing on this server"}},
)
async def delete_one_run(
    request: Request, run_id: RunId, who: Annotated[Principal, Depends(principal)]
) -> dict[str, Any]:
    require(who.scopes, RUNS_WRITE, "deleting a run")
    runner = request.app.state.runner
    if any(p.run_id == run_id for p in runner.live.values()):
        raise resume.RunNotResumable(
            f"run {run_id} is executing on this server: delete it once it has ended", code="run_in_progress"
        )
    await runner.recorder.flush()  # a run that just ended is in the database before it is deleted
    if not await delete_run(request.app.state.db, run_id, tenant=who.tenant):
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    return {"id": run_id, "object": "run.deleted", "deleted": True}
