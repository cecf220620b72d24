"""GET /metrics: the Prometheus text exposition (telemetry/metrics.py; series in docs/operations.md).

Like /health it needs no key, even when the server requires one from clients: scrapers seldom hold
API keys, and the series carry counts, latencies and bounded names, never prompts, keys or run ids.
Keep the port off untrusted networks, or serve with --metrics off. 404 when metrics are off."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from optigraph.errors import NotFound

router = APIRouter()


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    responses={
        200: {"description": "Prometheus text format (version 0.0.4)", "content": {"text/plain": {}}},
        404: {"description": "Metrics are off (--metrics off)"},
    },
)
async def metrics(request: Request) -> Response:
    """Every series of this server (all its worker processes, when it runs several)."""
    recorded = request.app.state.telemetry.metrics
    if recorded is None:
        raise NotFound("metrics are off on this server (started with --metrics off)")
    body, content_type = recorded.render()
    return Response(body, media_type=content_type)
