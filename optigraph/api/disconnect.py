"""Noticing that a client has gone while its request is being served.

Once a request's body is read, the ASGI server's `receive` answers only when the client disconnects
(or the response is complete) with `http.disconnect`, so waiting on it costs nothing until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
    # The watcher calls `on_gone` itself: awaiting the work alone (no asyncio.wait over both, with its
    # waiter and callbacks) is a visible share of a passthrough request's CPU.
    watcher = asyncio.ensure_future(_call_when_gone(request, task, on_gone))
    try:
        return await task
    finally:
        watcher.cancel()
        if not task.done():  # this handler itself was cancelled: the work goes with it
            on_gone()


async def _call_when_gone(request: Request, task: asyncio.Future[Any], on_gone: Callable[[], None]) -> None:
    await client_gone(request)
    if not task.done():
        on_gone()
