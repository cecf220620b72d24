"""Helpers for the API tests: a fake upstream and an optigraph server, both real HTTP on loopback,
with a real SQLite file behind optigraph.

`start_stack(...)` starts the pair; `Stack` gives clients (the official `openai` ones and raw
httpx), what the upstream received, and the runs and upstream calls optigraph stored.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread, UpstreamLog, echo_responder, free_port, make_app  # noqa: E402

from optigraph.api.app import create_app  # noqa: E402
from optigraph.config import Settings  # noqa: E402

JSON_COLUMNS = {"runs": ("request", "response", "error"), "upstream_calls": ("request", "response")}
FINISHED = ("completed", "failed", "cancelled", "interrupted")


class Script:
    """The fake upstream's responder, replaceable by a test (and reset after it)."""

    def __init__(self) -> None:
        self.fn: Callable[[dict[str, Any], int], Any] = echo_responder

    def __call__(self, body: dict[str, Any], index: int) -> Any:
        return self.fn(body, index)


def _row(row: sqlite3.Row, table: str) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS[table]:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


@dataclass
class Stack:
    """A fake upstream and an optigraph server in front of it, on one SQLite file."""

    server: ServerThread
    settings: Settings
    db_path: Path
    upstream: ServerThread | None = None
    log: UpstreamLog = field(default_factory=UpstreamLog)
    script: Script = field(default_factory=Script)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def client(self, api_key: str = "client-key", **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120, **kw)

    def aclient(self, api_key: str = "client-key", **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120, **kw)

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)

    def reset(self) -> None:
        self.log.bodies.clear()
        self.log.headers.clear()
        self.log.in_flight = self.log.max_in_flight = self.log.hold_until = 0
        self.log.opened = self.log.stalled = False
        self.script.fn = echo_responder

    # ---- what optigraph stored -------------------------------------------------------------

    def _query(self, table: str, where: str, *args: Any) -> list[dict[str, Any]]:
        con = sqlite3.connect(self.db_path, timeout=5)
        con.row_factory = sqlite3.Row
        try:
            return [_row(r, table) for r in con.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchall()]
        finally:
            con.close()

    def run(self, run_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """The stored run once it has finished (the recorder writes in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self._query("runs", "id = ?", run_id)
            if rows and rows[0]["status"] in FINISHED:
                return rows[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} was not stored as finished within {timeout}s: {rows}")
            time.sleep(0.02)

    def calls(self, run_id: str) -> list[dict[str, Any]]:
        return self._query("upstream_calls", "run_id = ? ORDER BY id", run_id)


@contextlib.contextmanager
def start_stack(
    db_path: Path,
    *,
    upstream: dict[str, Any] | None = None,
    base_url: str | None = None,
    registry: Any = None,
    tracer_provider: Any = None,
    **settings: Any,
) -> Iterator[Stack]:
    """Starts a fake upstream (unless `base_url` points elsewhere) and optigraph in front of it
    (tracing to `tracer_provider` when one is given)."""
    log, script = UpstreamLog(), Script()
    with contextlib.ExitStack() as stack:
        up = None
        if base_url is None:
            up = stack.enter_context(ServerThread(make_app(script, log=log, **(upstream or {}))))
            base_url = up.url + "/v1"
        # A shared stack sees many deliberate upstream failures in a row: its circuit breaker is off
        # unless a test turns it on (tests/api/test_api_faults.py does).
        settings.setdefault("breaker_failures", 0)
        s = Settings(base_url=base_url, db_url=f"sqlite:///{db_path}", **settings)
        server = stack.enter_context(ServerThread(create_app(s, registry=registry, tracer_provider=tracer_provider)))
        yield Stack(server=server, settings=s, db_path=db_path, upstream=up, log=log, script=script)


def closed_port_url() -> str:
    """The URL of a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return "".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c or ""
    return ""


def fake_usage(bodies: list[dict[str, Any]], answer: Callable[[dict[str, Any]], str] | None = None) -> dict[str, int]:
    """The usage the fake upstream reports for these request bodies (one choice each, echo answers
    unless `answer` says otherwise), summed."""
    answer = answer or (lambda b: echo_responder(b, 0))
    prompt = sum(len(str(m.get("content") or "").split()) for b in bodies for m in b.get("messages") or [])
    completion = sum(len(answer(b).split()) for b in bodies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
