"""Noticing that a client has gone while its request is being served.

Once a request's body is read, the ASGI server's `receive` answers only when the client disconnects
(or the response is complete) with `http.disconnect`, so waiting on it costs nothing until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def client_gone(request: Request) -> None:
    """Returns when the client of `request` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_goes(request: Request, work: Awaitable[T], on_gone: Callable[[], None]) -> T:
    """Awaits `work`; if the client disconnects first, calls `on_gone()` (which should make `work`
    end, e.g. by cancelling its run) and still waits for `work`'s outcome."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            on_gone()
        return await task
    finally:
        watcher.cancel()
        if not task.done():  # this handler itself was cancelled: the work goes with it
            on_gone()
