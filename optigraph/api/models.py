"""GET /v1/models."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request

from optigraph.api.auth import upstream_key
from optigraph.errors import OptigraphError, UpstreamInvalidResponse

router = APIRouter()
log = logging.getLogger("optigraph.api")


@router.get("/v1/models", tags=["models"], summary="Models the server can reach")
async def list_models(request: Request, key: str | None = Depends(upstream_key)) -> dict[str, Any]:
    backends = request.app.state.backends
    data: list[dict[str, Any]] = []
    if backends.upstream is not None:  # the base URL's server, or the proxy's providers
        try:
            data.extend(await backends.upstream.list_models(api_key=key))
        except UpstreamInvalidResponse:
            raise  # the upstream answered with something else than a model list: a 502 that says so
        except OptigraphError as exc:  # unreachable, or no /models route: the server's own entries still help
            log.warning("listing upstream models failed: %s", exc.message)
    if backends.local_reachable:  # with an upstream, local models are listed only when clients may use them
        data.append(
            {
                "id": request.app.state.settings.local_model,
                "object": "model",
                "created": 0,
                "owned_by": "optigraph-local",
            }
        )
    approaches = [
        {
            "id": spec.name,
            "kind": spec.kind,
            "description": spec.description,
            "needs": sorted(spec.needs),
            "calls": spec.calls,
            "rounds": spec.rounds,
            "expected_calls": getattr(spec, "expected_calls", None) or spec.calls,
        }
        for spec in request.app.state.registry.specs.values()
    ]
    return {"object": "list", "data": data, "approaches": approaches}
