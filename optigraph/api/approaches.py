"""GET /v1/approaches and GET /v1/approaches/{expression}: the techniques the server offers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from optigraph.api import schemas
from optigraph.api.auth import upstream_key
from optigraph.engine import inspection
from optigraph.errors import InvalidRequest

router = APIRouter(tags=["approaches"], dependencies=[Depends(upstream_key)])


@router.get(
    "/v1/approaches",
    summary="Every approach: description, parameters, cost formulas",
    response_model=schemas.ApproachList,
)
async def list_approaches(request: Request) -> dict[str, Any]:
    registry = request.app.state.registry
    return {"object": "list", "data": [inspection.approach_info(spec) for spec in registry.specs.values()]}


@router.get(
    "/v1/approaches/{expression}",
    summary="An approach or expression compiled: Mermaid drawing, choices, cost",
    response_model=schemas.ExpressionInfo,
)
async def show_expression(
    request: Request,
    expression: Annotated[
        str, Path(description="an approach name or expression, e.g. bon&re2|moa (percent-encode it: bon%26re2%7Cmoa)")
    ],
) -> dict[str, Any]:
    compiler = request.app.state.runner.compiler
    try:
        ast = inspection.parse_expression(expression, compiler)
    except InvalidRequest as exc:  # a bad expression here is the path parameter's fault, not the model's
        exc.param = "expression"
        raise
    compiled = await compiler.compile_async(ast)
    return inspection.expression_info(compiled, request.app.state.registry)
