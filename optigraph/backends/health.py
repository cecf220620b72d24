"""What a backend's own recent calls say about it, for /health, and to its circuit breaker. No probe
is sent: a health check costs nothing upstream, and reports what the last real call saw."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from optigraph.backends.breaker import CircuitBreaker
from optigraph.errors import UpstreamError, UpstreamUnavailable


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CallOutcomes:
    """The latest success and failure of one backend's calls (one instance per backend client), told
    to its circuit breaker too when it has one."""

    last_ok_at: datetime | None = None
    last_error_at: datetime | None = None
    last_error: str | None = None
    reachable: bool | None = None  # None until a call has been made
    breaker: CircuitBreaker | None = field(default=None, repr=False)

    def before_call(self) -> None:
        """Raises UpstreamUnavailable when the breaker refuses the call."""
        if self.breaker is not None:
            self.breaker.before_call()

    def succeeded(self) -> None:
        self.last_ok_at = _now()
        self.reachable = True
        if self.breaker is not None:
            self.breaker.succeeded()

    def failed(self, exc: UpstreamError) -> None:
        """A failed call. The upstream counts as reachable when it answered with a status below 500
        (a 400 about the request, a 429): it is up, the request or the rate was the problem. A call the
        breaker refused was not made: it changes nothing."""
        if isinstance(exc, UpstreamUnavailable):
            return
        if self.breaker is not None:
            self.breaker.failed(exc)
        self.last_error_at = _now()
        self.last_error = exc.message
        self.reachable = exc.upstream_status is not None and exc.upstream_status < 500

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reachable": self.reachable,
            "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "last_error": self.last_error,
        }
        if self.breaker is not None:
            out["breaker"] = self.breaker.report()
        return out
