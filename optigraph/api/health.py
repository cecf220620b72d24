"""GET /health: the database, each configured backend and the local model, without costing anything
upstream. 503 when the database is unusable (runs could not be stored); the body says why either way."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from optigraph.api.errors import ORJSONResponse
from optigraph.memory.db import check_database

router = APIRouter()

LOADING = ("not loaded", "loading")  # the default local model's states before it can serve

EXAMPLE = {
    "status": "ok",
    "database": {"ok": True, "error": None},
    "backends": {
        "openai": {
            "base_url": "http://127.0.0.1:8080/v1",
            "reachable": True,
            "last_ok_at": "2026-12-05T09:00:00+00:00",
            "last_error_at": None,
            "last_error": None,
            "breaker": {"state": "closed", "consecutive_failures": 0, "opens": 0, "rejected": 0, "retry_after_s": 0.0},
        }
    },
    "local_model": "unused",
    "local_models": [],
    "pid": 4242,
}


@router.get(
    "/health",
    tags=["health"],
    summary="Database, backends and local model",
    responses={
        200: {
            "description": "`status` is `ok`, `loading` (the local model is loading) or "
            "`degraded` (a backend's last call failed, or the local model did)",
            "content": {"application/json": {"example": EXAMPLE}},
        },
        503: {"description": "The database is unusable (`status`: `error`; `database.error` says why)"},
    },
)
async def health(request: Request) -> Response:
    """One query on the database (2 s at most); the backends report what their own recent calls saw
    (`reachable` is null until a call was made) and their circuit breaker's state, so no request is
    sent upstream."""
    state = request.app.state
    db_error = await check_database(state.db, state.settings.db_url)
    backends: dict[str, Any] = state.backends.health()
    local_status = getattr(state, "local_status", None)
    local = local_status() if local_status is not None else "unused"
    if db_error is not None:
        status = "error"
    elif local in LOADING:
        status = "loading"
    elif local.startswith("failed") or any(b.get("reachable") is False for b in backends.values()):
        status = "degraded"
    else:
        status = "ok"
    body = {
        "status": status,
        "database": {"ok": db_error is None, "error": db_error},
        "backends": backends,
        "local_model": local,
        "local_models": getattr(state, "local_models", list)(),
        "pid": os.getpid(),  # which worker process answered (serve --workers)
    }
    return ORJSONResponse(body, status_code=503 if db_error is not None else 200)
