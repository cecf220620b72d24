"""One log line per HTTP request (logger `optigraph.access`, level INFO): method, path, status,
latency to the last byte sent, and the run id when the request made or read a run. A request that
ran a model (POST /v1/chat/completions) adds its approach, model, how the run ended, its tokens and
upstream calls; with --log-format json the line is one JSON object with those fields
(docs/operations.md). The request's messages appear only with --log-prompts; keys never do.

The same middleware counts responses by status code for /metrics, so no second one is needed."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from optigraph.engine.runner import Prepared, run_usage
from optigraph.telemetry.metrics import Metrics

log = logging.getLogger("optigraph.access")

RUN_HEADER = b"x-optigraph-run-id"
# The scope key under which the chat route leaves the request's run for this log (`note_run`).
RUN_SCOPE_KEY = "optigraph.run"


def note_run(scope: dict[str, Any], prep: Prepared) -> None:
    """Lets the access-log line of this request describe its run."""
    scope[RUN_SCOPE_KEY] = prep


class AccessLog:
    """Pure ASGI middleware (a streamed answer is timed to its end, and nothing is buffered)."""

    def __init__(self, app: Any, *, metrics: Metrics | None = None, log_prompts: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (self.metrics is None and not log.isEnabledFor(logging.INFO)):
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
            if self.metrics is not None:
                self.metrics.http_response(seen["status"])
            if log.isEnabledFor(logging.INFO):
                self._log(scope, seen["status"], seen["run"], (time.perf_counter() - t0) * 1000.0)

    def _log(self, scope: dict[str, Any], status: int, run: str, latency_ms: float) -> None:
        # The query string is left out: it may carry a key.
        method, path = scope.get("method", "-"), scope.get("path", "")
        fields: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(latency_ms, 1),
            "run_id": None if run == "-" else run,
        }
        prep: Prepared | None = scope.get(RUN_SCOPE_KEY)
        if prep is None:
            log.info("%s %s %s %.1fms run=%s", method, path, status, latency_ms, run, extra={"fields": fields})
            return
        usage = run_usage(prep)
        fields.update(
            run_id=prep.run_id,
            approach=prep.expression,
            model=prep.model,
            run_status=prep.status,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            upstream_calls=usage["calls"],
        )
        if prep.trace_id is not None:
            fields["trace_id"] = prep.trace_id
        text = "%s %s %s %.1fms run=%s approach=%s model=%s status=%s tokens=%d/%d calls=%d"
        args: tuple[Any, ...] = ()
        if self.log_prompts:  # the operator's debugging switch: the conversation as the run got it
            fields["messages"] = prep.messages
            text, args = text + " messages=%s", (orjson.dumps(prep.messages).decode(),)
        log.info(
            text,
            method,
            path,
            status,
            latency_ms,
            prep.run_id,
            prep.expression,
            prep.model,
            prep.status,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["calls"],
            *args,
            extra={"fields": fields},
        )
