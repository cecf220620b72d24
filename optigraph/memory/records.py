"""What the runner records about runs and upstream calls, and the interface that stores it.

The runner only calls the non-blocking `Recorder` methods; a background writer (memory/recorder.py)
does the SQL work off the request's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# How a run stands: `running` until it ends; `cancelled` (its client disconnected) and `interrupted`
# (the server shut down) are stopped on purpose and, like `failed`, can be resumed from checkpoints.
RUN_STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("completed", "failed", "cancelled", "interrupted")


@dataclass
class RunRecord:
    """One client request served by an approach expression."""

    id: str
    expression: str
    model: str
    request: dict[str, Any]
    status: str = "running"  # one of RUN_STATUSES
    created_at: datetime = field(default_factory=utcnow)
    checkpointed: bool = False  # whether its graph state is in the checkpointer (resumable)
    parent_id: str | None = None
    user: str | None = None
    spec: dict[str, Any] | None = None  # what a resume rebuilds it from (engine/runner.py run_spec)
    tenant: str | None = None  # who it belongs to (api/access.py); None: no tenant (library use)


@dataclass
class RunResult:
    """How a run ended."""

    status: str  # one of RUN_STATUSES
    finished_at: datetime
    latency_ms: float
    usage: dict[str, int]
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass
class CallRecord:
    """One upstream request (one attempt) made by a node of a run."""

    run_id: str
    node: str
    backend: str
    model: str
    started_at: datetime
    latency_ms: float
    status: str  # ok | error
    request: dict[str, Any]  # messages and parameters sent
    response: dict[str, Any] | None  # choices returned (texts, finish reasons)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    error: str | None = None
    attempt: int = 1


class Recorder(Protocol):
    """Stores runs and calls. Every method returns at once; writing happens in the background."""

    def run_started(self, run: RunRecord) -> None: ...

    def run_finished(self, run_id: str, result: RunResult, *, run: RunRecord | None = None) -> None:
        """Ends a run. `run` is given when `run_started` was skipped (cheap one-call runs)."""
        ...

    def call(self, record: CallRecord) -> None: ...

    async def flush(self) -> None:
        """Waits until everything queued so far is written."""
        ...


class NullRecorder:
    """Records nothing (library use without a database)."""

    def run_started(self, run: RunRecord) -> None:
        return None

    def run_finished(self, run_id: str, result: RunResult, *, run: RunRecord | None = None) -> None:
        return None

    def call(self, record: CallRecord) -> None:
        return None

    async def flush(self) -> None:
        return None
