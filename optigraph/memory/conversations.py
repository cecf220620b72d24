"""Conversation memory: pieces of earlier turns of a conversation, stored and read back by its id.

The `memory` plugin stores each exchange (the question and the answer, cut into chunks) under the
client's conversation id and reads them back for later requests of the same conversation, on
whatever database the server uses (SQLite or PostgreSQL). `tenant` scopes a conversation id; it is
None until the server knows tenants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .records import utcnow
from .tables import MEMORY_CHUNKS

MAX_RECALLED = 5000  # the most recent chunks of a conversation read back for one request


@dataclass(frozen=True)
class StoredChunk:
    """One stored piece of a turn: who said it, what it says, and which run stored it."""

    role: str
    text: str
    run_id: str
    created_at: datetime


class ConversationStore:
    """Reads and writes conversation memory on one database (the server's)."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db

    async def remember(
        self, conversation: str, run_id: str, chunks: Sequence[tuple[str, str]], *, tenant: str | None = None
    ) -> None:
        """Stores `chunks` ((role, text) in the order said) as what run `run_id` added to the
        conversation, replacing what that run stored before (so a resumed run stores once)."""
        now = utcnow()
        rows = [
            {
                "tenant": tenant,
                "conversation": conversation,
                "run_id": run_id,
                "seq": i,
                "role": role,
                "text": text,
                "created_at": now,
            }
            for i, (role, text) in enumerate(chunks)
        ]
        async with self.db.begin() as conn:
            await conn.execute(
                delete(MEMORY_CHUNKS).where(self._key(conversation, tenant), MEMORY_CHUNKS.c.run_id == run_id)
            )
            if rows:
                await conn.execute(insert(MEMORY_CHUNKS), rows)

    async def recall(
        self, conversation: str, *, tenant: str | None = None, limit: int = MAX_RECALLED
    ) -> list[StoredChunk]:
        """The conversation's stored chunks, oldest first (at most the `limit` most recent)."""
        t = MEMORY_CHUNKS.c
        query = (
            select(t.role, t.text, t.run_id, t.created_at)
            .where(self._key(conversation, tenant))
            .order_by(t.id.desc())
            .limit(limit)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredChunk(role=r.role, text=r.text, run_id=r.run_id, created_at=r.created_at) for r in reversed(rows)]

    async def forget(self, conversation: str, *, tenant: str | None = None) -> int:
        """Deletes everything stored for the conversation; how many chunks were deleted."""
        async with self.db.begin() as conn:
            result = await conn.execute(delete(MEMORY_CHUNKS).where(self._key(conversation, tenant)))
        return int(result.rowcount or 0)

    @staticmethod
    def _key(conversation: str, tenant: str | None) -> ColumnElement[bool]:
        t = MEMORY_CHUNKS.c
        return (t.conversation == conversation) & (t.tenant.is_(None) if tenant is None else t.tenant == tenant)
