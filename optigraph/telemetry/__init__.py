"""What the server tells its operator: Prometheus metrics (metrics.py), OpenTelemetry traces
(tracing.py) and structured logs (logs.py). docs/operations.md describes all three."""

from __future__ import annotations

from dataclasses import dataclass

from optigraph.telemetry.metrics import Metrics
from optigraph.telemetry.tracing import Tracing


@dataclass(frozen=True)
class Telemetry:
    """The application's metrics and tracing, each None when off (then its hooks cost one check)."""

    metrics: Metrics | None = None
    tracing: Tracing | None = None


OFF = Telemetry()

__all__ = ["OFF", "Metrics", "Telemetry", "Tracing"]
