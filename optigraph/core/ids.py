"""Run ids: time-ordered, unguessable, and cheap enough for every request.

An id is 32 hex digits, like a uuid4's hex: the creation time in milliseconds (48 bits) then 80 random
bits. Ids made later sort later, so new rows land at the end of the indexes keyed by run id (the runs'
primary key, the calls' run id) instead of on a random page each: with random ids every recorded run
dirtied two more index pages, and SQLite wrote each to its log and again at the checkpoint. 80 random
bits keep an id as hard to guess as a random one would be for anyone who does not know when it was made
to the millisecond, and apart from ids made in the same millisecond by chance (2^-80).

`uuid.uuid4()` asks the kernel for 16 random bytes on each call; a passthrough request makes one run id,
and that system call was a visible share of its CPU. `RunIds` asks for 4 KiB at once and hands out
10 bytes at a time: the same randomness (os.urandom), one system call per 409 ids.
"""

from __future__ import annotations

import os
import time

RANDOM_BYTES = 10
POOL_BYTES = 4096


class RunIds:
    """Makes 32-hex-digit ids (a 48-bit millisecond time, then 80 random bits from pooled os.urandom)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        """A fresh id, sorting after those made in earlier milliseconds."""
        if self._at + RANDOM_BYTES > len(self._pool):
            self._pool, self._at = os.urandom(POOL_BYTES), 0
        start = self._at
        self._at = start + RANDOM_BYTES
        return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{self._pool[start : self._at].hex()}"
