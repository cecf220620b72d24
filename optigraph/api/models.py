"""GET /v1/models: the upstream's models (and the local ones clients may use), the approaches, and,
with `--list-approach-models`, approach-prefixed ids (`moa-gpt-4o-mini`) for chat front ends that only
offer the models a list shows. Each prefixed id is listed only when it works as a model name: it
splits back into that prefix and model (engine/selection.py) and the model's backend offers what the
prefix's approaches need."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request

from optigraph.api.auth import upstream_key
from optigraph.engine.expression import names, parse, to_text, validate
from optigraph.engine.registry import Registry
from optigraph.engine.selection import split_model
from optigraph.errors import InvalidRequest, OptigraphError, UpstreamInvalidResponse

router = APIRouter()
log = logging.getLogger("optigraph.api")


@router.get("/v1/models", tags=["models"], summary="Models the server can reach")
async def list_models(request: Request, key: str | None = Depends(upstream_key)) -> dict[str, Any]:
    backends = request.app.state.backends
    settings = request.app.state.settings
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
                "id": settings.local_model,
                "object": "model",
                "created": 0,
                "owned_by": "optigraph-local",
            }
        )
    if settings.list_approach_models:
        data.extend(prefixed_models(request, data, settings.model_list_approaches))
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


class ListedApproachError(ValueError):
    """A --model-list-approaches entry that is not a valid model prefix (the server does not start)."""


def check_listed_approaches(prefixes: list[str], registry: Registry) -> None:
    """Fails the start on a --model-list-approaches entry that is not a valid prefix."""
    for prefix in prefixes:
        try:
            if "-" in prefix:
                raise InvalidRequest("a prefix cannot hold '-' (it separates the prefix from the model)")
            validate(parse(prefix), registry.names())
        except InvalidRequest as exc:
            raise ListedApproachError(f"--model-list-approaches: {prefix!r}: {exc.message}") from None


def prefixed_models(request: Request, models: list[dict[str, Any]], prefixes: list[str]) -> list[dict[str, Any]]:
    """`<prefix>-<model>` for every listed model and prefix that serves it."""
    registry = request.app.state.registry
    runner = request.app.state.runner
    known = registry.names()
    out = []
    for model in models:
        base = model["id"]
        try:
            caps = request.app.state.backends.for_model(base)[0].capabilities(base)
        except OptigraphError:
            continue
        for prefix in prefixes:
            ast = parse(prefix)
            if split_model(f"{prefix}-{base}", known) != (to_text(ast), base):
                continue  # the model's own name starts like a prefix: the id would not route back to it
            needs = {need for name in names(ast) for need in registry.get(name).needs}
            if all(runner.offers(need, caps) for need in needs):
                out.append({"id": f"{prefix}-{base}", "object": "model", "created": 0, "owned_by": "optigraph"})
    return out
