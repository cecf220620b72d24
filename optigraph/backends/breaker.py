"""A circuit breaker per upstream: after `failures` consecutive failed calls the upstream is not
called for `cooldown_s`; then one call goes through as a probe (half-open). The probe's success
closes the breaker; its failure opens it for another cool-down. While open (and while the probe is
out), calls fail at once with UpstreamUnavailable (503, `Retry-After`), so a dead upstream costs
clients no timeouts and the upstream no load while it recovers. A probe that has reported nothing
within a cool-down (cancelled with its run, or still waiting on a slow upstream) no longer holds the
others back: the next call is another probe.

Only failures that say the upstream is unwell count: no answer (connection refused or dropped, a
timeout) or a 5xx. A 4xx (429 included) is an answer from a working upstream and counts as a
success for the breaker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from optigraph.errors import UpstreamError, UpstreamUnavailable

State = Literal["closed", "open", "half_open"]


def counts_as_failure(exc: UpstreamError) -> bool:
    """Whether a failed call is the upstream's ill health: no answer at all, or a 5xx."""
    return exc.upstream_status is None or exc.upstream_status >= 500


@dataclass
class CircuitBreaker:
    """The breaker of one upstream. `clock` is the time cool-downs are measured with (a test passes its
    own). `failures` of 0 turns the breaker off."""

    name: str
    failures: int = 5
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    opened_at: float | None = None  # when it last opened; None while closed
    probing: bool = False  # a half-open probe is out
    probe_started: float = 0.0
    opens: int = 0  # how many times it opened
    rejected: int = 0  # calls refused

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def retry_after_s(self) -> float:
        """Seconds until a probe may go (0 when it may go now)."""
        if self.opened_at is None:
            return 0.0
        now = self.clock()
        wait = self.opened_at + self.cooldown_s - now
        if wait <= 0 and self.probing:  # a probe is out: its outcome, or the next probe, within a cool-down
            wait = self.probe_started + self.cooldown_s - now
        return max(0.0, wait)

    def before_call(self) -> None:
        """Lets a call through, or raises UpstreamUnavailable while open or while the probe is out."""
        if self.failures <= 0 or self.opened_at is None:
            return
        if self.state == "half_open" and self.retry_after_s() <= 0:
            self.probing = True  # this call is the probe; the others wait for its outcome
            self.probe_started = self.clock()
            return
        self.rejected += 1
        wait = self.retry_after_s()
        raise UpstreamUnavailable(
            f"upstream {self.name} is unavailable: its circuit breaker is open after {self.consecutive} "
            f"consecutive failures; retry in {math.ceil(wait)} s",
            retry_after_s=wait,
        )

    def succeeded(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def failed(self, exc: UpstreamError) -> None:
        """Counts a failed call: an upstream answer below 500 is a success; anything else may open it."""
        if not counts_as_failure(exc):
            self.succeeded()
            return
        self.consecutive += 1
        if self.failures > 0 and (self.probing or self.consecutive >= self.failures):
            if self.opened_at is None or self.probing:
                self.opens += 1
            self.opened_at = self.clock()
            self.probing = False

    def report(self) -> dict[str, Any]:
        """The breaker's state, for /health."""
        return {
            "state": self.state if self.failures > 0 else "disabled",
            "consecutive_failures": self.consecutive,
            "opens": self.opens,
            "rejected": self.rejected,
            "retry_after_s": round(self.retry_after_s(), 3),
        }
