"""Random identifiers for runs, cheap enough for every request.

`uuid.uuid4()` asks the kernel for 16 random bytes on each call; a passthrough request makes one run id,
and that system call was a visible share of its CPU. `RunIds` asks for 4 KiB at once and hands out 16
bytes at a time: the same randomness (os.urandom), one system call per 256 ids.
"""

from __future__ import annotations

import os

ID_BYTES = 16
POOL_BYTES = 4096


class RunIds:
    """Makes 32-hex-digit ids (128 random bits, the length of a uuid4's hex) from pooled os.urandom."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        """A fresh id; never the same twice except by chance (2^-128)."""
        if self._at + ID_BYTES > len(self._pool):
            self._pool, self._at = os.urandom(POOL_BYTES), 0
        start = self._at
        self._at = start + ID_BYTES
        return self._pool[start : self._at].hex()
