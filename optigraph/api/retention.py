"""The retention task: deletes runs older than the configured age, once an hour, in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.memory.records import Recorder, utcnow
from optigraph.memory.retention import orphan_calls, prune_runs

log = logging.getLogger(__name__)

INTERVAL_S = 3600.0


@dataclass
class RetentionTask:
    """Prunes runs older than `max_age_days` now and every `interval_s`. `clock` gives the time."""

    db: AsyncEngine
    recorder: Recorder
    max_age_days: float
    interval_s: float = INTERVAL_S
    clock: Callable[[], datetime] = utcnow

    async def prune_once(self) -> int:
        """Deletes the runs (with their calls, checkpoints and memory) past the age; how many."""
        await self.recorder.flush()
        cutoff = self.clock() - timedelta(days=self.max_age_days)
        deleted = await prune_runs(self.db, before=cutoff)
        await orphan_calls(self.db, before=cutoff)
        if deleted:
            log.info("retention: deleted %d runs created before %s", deleted, cutoff.isoformat())
        return deleted

    async def run_forever(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # the database is unreachable for now: try again at the next beat
                log.exception("retention: pruning runs failed")
            await asyncio.sleep(self.interval_s)
