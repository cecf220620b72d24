"""GET /v1/runs and GET /v1/runs/{run_id}: stored runs, their steps and upstream calls.
POST /v1/runs/{run_id}/resume and /fork: continue an interrupted run, or start a new run from one of
its checkpoints (engine/resume.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from optigraph.api import schemas
from optigraph.api.auth import upstream_key
from optigraph.api.disconnect import unless_client_goes
from optigraph.api.errors import error_response
from optigraph.engine import inspection, resume
from optigraph.errors import NotFound, OptigraphError, RunCancelled
from optigraph.memory.queries import MAX_LIMIT, get_run, page_runs

# Every route here needs the server's key when it has one (the forwarded key itself is unused).
router = APIRouter(tags=["runs"], dependencies=[Depends(upstream_key)])

RunId = Annotated[
    str, Path(description="The run id (the `optigraph.run_id` of a response, or the x-optigraph-run-id header)")
]


async def load_run(request: Request, run_id: str) -> dict[str, Any]:
    """The stored run with its upstream calls, or a 404."""
    row = await get_run(request.app.state.db, run_id)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    return row


@router.get("/v1/runs", summary="Stored runs, newest first", response_model=schemas.RunList)
async def list_runs(
    request: Request,
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
    page = await page_runs(
        request.app.state.db,
        status=status,
        expression=inspection.approach_filter(approach),
        model=model,
        created_after=created_after,
        created_before=created_before,
        after=after,
        limit=limit,
    )
    return inspection.run_list(page.runs, has_more=page.has_more)


@router.get(
    "/v1/runs/{run_id}",
    summary="One run: its graph, steps, upstream calls and totals",
    response_model=schemas.RunDetail,
)
async def show_run(
    request: Request,
    run_id: RunId,
    max_chars: Annotated[
        int, Query(ge=0, description="cut strings longer than this; 0 keeps them whole")
    ] = inspection.MAX_CHARS,
) -> dict[str, Any]:
    row = await load_run(request, run_id)
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
            return error_response(exc)
        except OptigraphError as exc:
            await recorder.flush()  # what is stored matches the answer before it is sent
            stored = await get_run(request.app.state.db, run_id) is not None
            headers = {"x-optigraph-run-id": run_id} if stored else None
            return error_response(exc, headers)
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
async def resume_run(request: Request, run_id: RunId, key: str | None = Depends(upstream_key)) -> Response:
    runner = request.app.state.runner
    return await _answer(
        request, run_id, lambda: resume.resume_run(runner, run_id, db=request.app.state.db, client_key=key)
    )


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
    run_id: RunId,
    body: Annotated[ForkRequest | None, Body()] = None,
    key: str | None = Depends(upstream_key),
) -> Response:
    runner = request.app.state.runner
    body = body or ForkRequest()
    new_id = uuid.uuid4().hex  # chosen here so that a failed fork's answer names the new run, not its source
    return await _answer(
        request,
        new_id,
        lambda: resume.fork_run(
            runner,
            run_id,
            db=request.app.state.db,
            client_key=key,
            checkpoint_id=body.checkpoint_id,
            thread=body.thread,
            patch=body.patch,
            new_id=new_id,
        ),
    )
