"""The decoding loop shared by standard generation and the decoding strategies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optigraph.local.batch import Batch

# pick(logits [alive, vocab], alive rows) -> tokens LongTensor [alive]
Pick = Callable[[Any, list[int]], Any]
# after(row, token, logits of that row before the token) -> a finish reason to end the row now, or None
After = Callable[[int, int, Any], "str | None"]


@dataclass
class RowResult:
    tokens: list[int] = field(default_factory=list)  # generated tokens; an end-of-sequence token is not included
    finish_reason: str = "length"  # "stop" (end of sequence), "length", "cancelled", or what `after` said


def decode_rows(
    batch: Batch,
    *,
    limits: Sequence[int],
    pick: Pick,
    eos_ids: frozenset[int],
    cancel: threading.Event | None = None,
    after: After | None = None,
    hidden: bool = False,
) -> list[RowResult]:
    """Decodes every row of `batch` until it ends (end-of-sequence token), reaches its token limit, or
    `after` ends it. Finished rows leave the batch so they stop costing compute. Rows are numbered as in
    the batch when called; `pick` gets the logits of the rows still going, in that order."""
    results = [RowResult() for _ in range(batch.rows)]
    alive = list(range(batch.rows))
    for row in alive:
        if limits[row] <= 0:
            results[row].finish_reason = "length"
    alive = [r for r in alive if limits[r] > 0]
    if len(alive) < batch.rows and alive:
        batch.select(alive)
    while alive:
        if cancel is not None and cancel.is_set():
            for row in alive:
                results[row].finish_reason = "cancelled"
            break
        tokens = pick(batch.logits, alive)
        chosen = tokens.tolist()
        keep: list[int] = []
        for pos, row in enumerate(alive):
            token = int(chosen[pos])
            result = results[row]
            if token in eos_ids:
                result.finish_reason = "stop"
                continue
            result.tokens.append(token)
            reason = after(row, token, batch.logits[pos]) if after is not None else None
            if reason is not None:
                result.finish_reason = reason
            elif len(result.tokens) >= limits[row]:
                result.finish_reason = "length"
            else:
                keep.append(pos)
        if not keep:
            break
        if len(keep) < len(alive):
            batch.select(keep)
            tokens = tokens[keep]
        alive = [alive[pos] for pos in keep]
        batch.step(tokens, hidden=hidden)
    return results
