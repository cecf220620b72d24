"""/v1/spl/strategies: read, edit and delete what the `spl` plugin has learned."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from optigraph.api.auth import upstream_key
from optigraph.errors import InvalidRequest, NotFound
from optigraph.memory.strategies import MAX_TEXT_CHARS, StrategyStore
from optigraph.plugins.problem_types import PROBLEM_TYPES

router = APIRouter(tags=["spl"], dependencies=[Depends(upstream_key)])

StrategyId = Annotated[int, Path(ge=1, description="the strategy's id")]


class StrategyInfo(BaseModel):
    """One strategy and its record."""

    object: str = "spl.strategy"
    id: int
    problem_type: str
    text: str
    uses: int
    successes: int
    success_rate: float = Field(description="(successes + 1) / (uses + 2): a new strategy counts as even")
    refinements: int
    example: str | None
    source_run: str | None = Field(description="the run that created it (null: added by hand or imported)")
    tenant: str | None
    created_at: str
    updated_at: str


class StrategyList(BaseModel):
    object: str = "list"
    data: list[StrategyInfo]


class StrategyEdit(BaseModel):
    """The fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    problem_type: str | None = Field(None, description="one of: " + ", ".join(PROBLEM_TYPES))
    uses: int | None = Field(None, ge=0)
    successes: int | None = Field(None, ge=0)


def _store(request: Request) -> StrategyStore:
    return StrategyStore(request.app.state.db)


def _info(strategy: Any) -> dict[str, Any]:
    return {"object": "spl.strategy", **strategy.to_dict()}


async def _found(store: StrategyStore, strategy_id: int) -> Any:
    strategy = await store.get(strategy_id)
    if strategy is None:
        raise NotFound(f"no strategy {strategy_id}", param="strategy_id")
    return strategy


@router.get("/v1/spl/strategies", summary="The learned strategies, by problem type", response_model=StrategyList)
async def list_strategies(
    request: Request,
    problem_type: Annotated[str | None, Query(description="only this problem type")] = None,
) -> dict[str, Any]:
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise InvalidRequest(
            f"unknown problem type {problem_type!r}; known: {', '.join(PROBLEM_TYPES)}", param="problem_type"
        )
    strategies = await _store(request).read(problem_type)
    return {"object": "list", "data": [_info(s) for s in strategies]}


@router.get("/v1/spl/strategies/{strategy_id}", summary="One strategy", response_model=StrategyInfo)
async def show_strategy(request: Request, strategy_id: StrategyId) -> dict[str, Any]:
    return _info(await _found(_store(request), strategy_id))


@router.patch("/v1/spl/strategies/{strategy_id}", summary="Edit a strategy", response_model=StrategyInfo)
async def edit_strategy(
    request: Request, strategy_id: StrategyId, edit: Annotated[StrategyEdit, Body()]
) -> dict[str, Any]:
    store = _store(request)
    current = await _found(store, strategy_id)
    if edit.problem_type is not None and edit.problem_type not in PROBLEM_TYPES:
        raise InvalidRequest(
            f"unknown problem type {edit.problem_type!r}; known: {', '.join(PROBLEM_TYPES)}", param="problem_type"
        )
    uses = current.uses if edit.uses is None else edit.uses
    successes = current.successes if edit.successes is None else edit.successes
    if successes > uses:
        raise InvalidRequest(f"successes ({successes}) cannot exceed uses ({uses})", param="successes")
    edited = await store.edit(strategy_id, **edit.model_dump(exclude_none=True))
    if edited is None:  # deleted meanwhile
        raise NotFound(f"no strategy {strategy_id}", param="strategy_id")
    return _info(edited)


@router.delete("/v1/spl/strategies/{strategy_id}", summary="Delete a strategy")
async def delete_strategy(request: Request, strategy_id: StrategyId) -> dict[str, Any]:
    if not await _store(request).delete(strategy_id):
        raise NotFound(f"no strategy {strategy_id}", param="strategy_id")
    return {"object": "spl.strategy.deleted", "id": strategy_id, "deleted": True}
