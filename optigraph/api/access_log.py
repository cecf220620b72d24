"""One log line per HTTP request (logger `optigraph.access`, level INFO): method, path, status,
latency to the last byte sent, and the run id when the request made or read a run."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("optigraph.access")

RUN_HEADER = b"x-optigraph-run-id"


class AccessLog:
    """Pure ASGI middleware (a streamed answer is timed to its end, and nothing is buffered)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "run": "-"}  # 500: the app raised before answering

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers") or ():
                    if name.lower() == RUN_HEADER:
                        seen["run"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            # The query string is left out: it may carry a key.
            log.info(
                "%s %s %s %.1fms run=%s",
                scope.get("method", "-"),
                scope.get("path", ""),
                seen["status"],
                (time.perf_counter() - t0) * 1000.0,
                seen["run"],
            )
