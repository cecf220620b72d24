"""GET /v1/runs and GET /v1/runs/{run_id}: stored runs, their steps and upstream calls."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from optigraph.api.auth import upstream_key
from optigraph.engine import inspect
from optigraph.errors import NotFound
from optigraph.memory.queries import MAX_LIMIT, get_run, page_runs

# Every route here needs the server's key when it has one (the forwarded key itself is unused).
router = APIRouter(tags=["runs"], dependencies=[Depends(upstream_key)])

RunId = Annotated[str, Path(description="The run id (the `optigraph.run_id` of a response, or the "
                                        "x-optigraph-run-id header)")]


async def load_run(request: Request, run_id: str) -> dict[str, Any]:
    """The stored run with its upstream calls, or a 404."""
    row = await get_run(request.app.state.db, run_id)
    if row is None:
        raise NotFound(f"no run with id {run_id!r}", param="run_id")
    return row


@router.get("/v1/runs", summary="Stored runs, newest first", response_model=inspect.RunList)
async def list_runs(
    request: Request,
    status: Annotated[str | None, Query(description="running, completed or failed")] = None,
    approach: Annotated[str | None, Query(description="the run's approach expression, e.g. bon&re2")] = None,
    model: Annotated[str | None, Query(description="the upstream model (approach prefix removed)")] = None,
    created_after: Annotated[datetime | None, Query(description="ISO 8601; UTC when no offset is given")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601; UTC when no offset is given")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    after: Annotated[str | None, Query(description="the `next_cursor` of the previous page")] = None,
) -> inspect.RunList:
    page = await page_runs(request.app.state.db, status=status, expression=inspect.canonical(approach), model=model,
                           created_after=created_after, created_before=created_before, after=after, limit=limit)
    return inspect.run_list(page.runs, has_more=page.has_more)


@router.get("/v1/runs/{run_id}", summary="One run: its graph, steps, upstream calls and totals",
            response_model=inspect.RunDetail)
async def show_run(
    request: Request,
    run_id: RunId,
    max_chars: Annotated[int, Query(ge=0, description="cut strings longer than this; 0 keeps them whole")]
    = inspect.MAX_CHARS,
) -> inspect.RunDetail:
    row = await load_run(request, run_id)
    return await inspect.run_detail(row, request.app.state.engine.compiler, max_chars=max_chars or None)

