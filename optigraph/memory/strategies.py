"""The strategies the `spl` plugin learns, kept in the server's database (table `spl_strategies`).

A strategy is advice for one type of problem. The plugin reads the best ones of a type, records how
each one it used fared, adds the strategies it writes, rewrites those it refines, and keeps at most
a given number per type; people read and edit them with `optigraph spl ...` and `/v1/spl/strategies`.
`tenant` scopes every query; it is None until the server knows tenants.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .records import utcnow
from .tables import SPL_STRATEGIES

MAX_TEXT_CHARS = 2000  # a strategy is a few sentences; longer text is cut where it is stored


@dataclass(frozen=True)
class Strategy:
    """One stored strategy and its record."""

    id: int
    problem_type: str
    text: str
    uses: int
    successes: int
    refinements: int
    example: str | None
    source_run: str | None
    created_at: datetime
    updated_at: datetime
    tenant: str | None = None

    @property
    def success_rate(self) -> float:
        """Successes over uses, smoothed towards one half (a new strategy counts as even)."""
        return (self.successes + 1) / (self.uses + 2)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        out["success_rate"] = round(self.success_rate, 4)
        return out


def _row(r: Any) -> Strategy:
    return Strategy(
        id=int(r.id),
        problem_type=r.problem_type,
        text=r.text,
        uses=int(r.uses),
        successes=int(r.successes),
        refinements=int(r.refinements),
        example=r.example,
        source_run=r.source_run,
        created_at=r.created_at,
        updated_at=r.updated_at,
        tenant=r.tenant,
    )


class StrategyStore:
    """Reads and writes `spl` strategies on one database (the server's)."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db

    async def read(self, problem_type: str | None = None, *, tenant: str | None = None) -> list[Strategy]:
        """The strategies (of one type, or all), by type, then best success rate first, then oldest."""
        t = SPL_STRATEGIES.c
        query = select(SPL_STRATEGIES).where(_tenant(tenant))
        if problem_type is not None:
            query = query.where(t.problem_type == problem_type)
        async with self.db.connect() as conn:
            rows = [_row(r) for r in (await conn.execute(query.order_by(t.id))).all()]
        return sorted(rows, key=lambda s: (s.problem_type, -s.success_rate, s.id))

    async def get(self, strategy_id: int, *, tenant: str | None = None) -> Strategy | None:
        query = select(SPL_STRATEGIES).where(SPL_STRATEGIES.c.id == strategy_id, _tenant(tenant))
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        return _row(row) if row is not None else None

    async def add(
        self,
        problem_type: str,
        text: str,
        *,
        example: str | None = None,
        source_run: str | None = None,
        uses: int = 0,
        successes: int = 0,
        refinements: int = 0,
        tenant: str | None = None,
    ) -> Strategy:
        """Stores a new strategy and returns it."""
        now = utcnow()
        values = {
            "tenant": tenant,
            "problem_type": problem_type,
            "text": text[:MAX_TEXT_CHARS],
            "uses": uses,
            "successes": min(successes, uses),
            "refinements": refinements,
            "example": example,
            "source_run": source_run,
            "created_at": now,
            "updated_at": now,
        }
        async with self.db.begin() as conn:
            result = await conn.execute(insert(SPL_STRATEGIES).values(**values))
            new_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return Strategy(id=new_id, **{k: v for k, v in values.items() if k != "tenant"}, tenant=tenant)

    async def edit(self, strategy_id: int, *, tenant: str | None = None, **changes: Any) -> Strategy | None:
        """Changes the given fields (text, problem_type, uses, successes); None if there is no such
        strategy."""
        allowed = {"text", "problem_type", "uses", "successes"}
        values = {k: v for k, v in changes.items() if k in allowed and v is not None}
        if "text" in values:
            values["text"] = str(values["text"])[:MAX_TEXT_CHARS]
        values["updated_at"] = utcnow()
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(SPL_STRATEGIES).where(SPL_STRATEGIES.c.id == strategy_id, _tenant(tenant)).values(**values)
            )
        if not result.rowcount:
            return None
        return await self.get(strategy_id, tenant=tenant)

    async def refine(self, strategy_id: int, text: str, *, tenant: str | None = None) -> None:
        """Replaces a strategy's text with its refined version (its record is kept)."""
        t = SPL_STRATEGIES.c
        async with self.db.begin() as conn:
            await conn.execute(
                update(SPL_STRATEGIES)
                .where(t.id == strategy_id, _tenant(tenant))
                .values(text=text[:MAX_TEXT_CHARS], refinements=t.refinements + 1, updated_at=utcnow())
            )

    async def record(
        self, strategy_ids: Iterable[int], *, success: bool, example: str | None, tenant: str | None = None
    ) -> None:
        """Counts one use of each strategy (and one success if the answer succeeded)."""
        ids = list(strategy_ids)
        if not ids:
            return
        t = SPL_STRATEGIES.c
        async with self.db.begin() as conn:
            await conn.execute(
                update(SPL_STRATEGIES)
                .where(t.id.in_(ids), _tenant(tenant))
                .values(
                    uses=t.uses + 1,
                    successes=t.successes + (1 if success else 0),
                    example=example,
                    updated_at=utcnow(),
                )
            )

    async def delete(self, strategy_id: int, *, tenant: str | None = None) -> bool:
        async with self.db.begin() as conn:
            result = await conn.execute(
                delete(SPL_STRATEGIES).where(SPL_STRATEGIES.c.id == strategy_id, _tenant(tenant))
            )
        return bool(result.rowcount)

    async def prune(self, problem_type: str, keep: int, *, tenant: str | None = None) -> list[int]:
        """Deletes all but the `keep` best strategies of a type (success rate, then most used, then
        newest); the ids deleted."""
        ranked = sorted(await self.read(problem_type, tenant=tenant), key=lambda s: (-s.success_rate, -s.uses, -s.id))
        gone = [s.id for s in ranked[keep:]]
        if gone:
            async with self.db.begin() as conn:
                await conn.execute(delete(SPL_STRATEGIES).where(SPL_STRATEGIES.c.id.in_(gone), _tenant(tenant)))
        return gone

    async def import_many(self, items: Sequence[dict[str, Any]], *, tenant: str | None = None) -> list[Strategy]:
        """Adds exported strategies (each a dict with `problem_type` and `text`, and optionally its
        record) as new ones."""
        return [
            await self.add(
                str(item["problem_type"]),
                str(item["text"]),
                example=item.get("example"),
                uses=int(item.get("uses") or 0),
                successes=int(item.get("successes") or 0),
                refinements=int(item.get("refinements") or 0),
                tenant=tenant,
            )
            for item in items
        ]


def _tenant(tenant: str | None) -> ColumnElement[bool]:
    t = SPL_STRATEGIES.c
    return t.tenant.is_(None) if tenant is None else t.tenant == tenant
