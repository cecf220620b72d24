"""Admitting a run under its tenant's limits (memory/limits.py), and holding its slot while it runs.

`RunSlots` is the server's side of the concurrent-runs limit: it takes a slot in the database when a
run is admitted, frees it when the run ends, and renews the slots of its live admissions every third of
their lifetime, so that the slots of a server that died expire and free their tenants. Admissions are
held weakly: one dropped without its release (a response never sent) stops being renewed and expires.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.api.access import Access, Principal
from optigraph.memory.limits import admit, release, renew_slots
from optigraph.memory.records import utcnow

log = logging.getLogger(__name__)

SLOT_TTL_S = 60.0


@dataclass(eq=False)
class Admission:
    """An admitted run: `release()` (idempotent) frees its concurrency slot, if it took one."""

    slots: RunSlots
    slot: str | None

    async def release(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            await self.slots.free(slot)


@dataclass
class RunSlots:
    """This server's run slots on the shared database. `clock` gives the time; tests replace it."""

    db: AsyncEngine
    access: Access
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    ttl_s: float = SLOT_TTL_S
    clock: Callable[[], datetime] = utcnow
    _live: weakref.WeakSet[Admission] = field(default_factory=weakref.WeakSet)

    async def admit(self, principal: Principal) -> Admission:
        """Admits one run of `principal` (RateLimited, a 429, when over a limit)."""
        limits = await self.access.limits(principal)
        if not limits.any():
            return Admission(self, None)
        slot = await admit(
            self.db, tenant=principal.tenant, limits=limits, owner=self.owner, now=self.clock(), slot_ttl_s=self.ttl_s
        )
        admission = Admission(self, slot)
        if slot is not None:
            self._live.add(admission)
        return admission

    async def free(self, slot: str) -> None:
        try:
            await asyncio.shield(release(self.db, slot))
        except Exception:  # the slot expires on its own; say why it lingers
            log.exception("could not free run slot %s", slot)

    async def renew_forever(self) -> None:
        """Renews this server's slots until cancelled (the app's lifespan runs it)."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            live = [a.slot for a in list(self._live) if a.slot is not None]
            try:
                await renew_slots(self.db, live, now=self.clock(), ttl_s=self.ttl_s)
            except Exception:  # the database is unreachable for now: try again at the next beat
                log.exception("renewing run slots failed")
