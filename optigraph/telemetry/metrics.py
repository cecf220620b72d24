"""Prometheus metrics: what the server serves, what it spends upstream, and how it stands.

One `Metrics` object per application, on its own `CollectorRegistry` (never the library's global
one). The series are listed in docs/operations.md. Every label value is bounded: approach and model
names pass through `LabelFolder`s, statuses and outcomes are fixed sets, and no run id or prompt text
is ever a label.

Several worker processes: prometheus-client's multiprocess mode. Each process writes its values to
memory-mapped files in the directory named by PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker
reads them all (`render`). `prepare_multiprocess_dir` is what a supervisor calls once before starting
its workers; `mark_worker_dead` when one exits. Without the variable every value lives in this process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"  # the label value every name past a folder's cap becomes

# Seconds. A run of a multi-call approach takes several upstream rounds, so the buckets reach minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# The circuit-breaker states a breaker reports with `set_breaker_state`.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def prepare_multiprocess_dir(path: str | Path | None = None) -> Path:
    """Makes metrics correct across worker processes: call once in the supervisor, before any worker
    starts. Empties `path` (default: a new temporary directory) of an earlier server's files and sets
    PROMETHEUS_MULTIPROC_DIR to it, which the workers inherit. Returns the directory."""
    directory = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="optigraph-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.glob("*.db"):  # counters of a previous run would be added to this one's
        entry.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def remove_multiprocess_dir(path: str | Path) -> None:
    """Removes a directory `prepare_multiprocess_dir` made, once every worker has exited."""
    shutil.rmtree(path, ignore_errors=True)


def mark_worker_dead(pid: int) -> None:
    """Drops the live gauges (runs in flight, breaker states) of a worker that exited."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def multiprocess_dir() -> str | None:
    """The shared directory when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class LabelFolder:
    """Bounds a label's values: `known` names always pass; other names pass while fewer than `cap` of
    them were admitted, and only when `admit` says the name is real (e.g. the upstream answered for
    it), so a client cannot fill the set with names that do not exist. Everything else is "other"."""

    def __init__(self, known: frozenset[str] | set[str], cap: int) -> None:
        self.known = frozenset(known)
        self.cap = cap
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str, *, admit: bool = True) -> str:
        if name in self.known or name in self._admitted:
            return name
        if not admit:
            return OTHER
        with self._lock:
            if len(self._admitted) >= self.cap:
                return OTHER
            self._admitted.add(name)
        return name


class Metrics:
    """The server's series. The record methods are a few dict look-ups and additions each: they run on
    every request (engine/runner.py) and every upstream call (core/llm.py)."""

    def __init__(
        self, *, approaches: frozenset[str] = frozenset(), models: frozenset[str] = frozenset(), max_names: int = 64
    ) -> None:
        if multiprocess_dir() and values.ValueClass is values.MutexValue:
            # The library picks its value class when first imported; a worker whose directory was set
            # later (prepare_multiprocess_dir in this same process) switches now, before any metric exists.
            values.ValueClass = values.get_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        # Each labelled child, once looked up (prometheus-client's `labels()` validates on every call);
        # as bounded as the labels are.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.approach = LabelFolder(approaches, max_names)
        self.model = LabelFolder(models, max_names)
        r = self.registry
        self.requests = Counter(
            "optigraph_requests",
            "Runs served, by approach expression, model and how the run ended",
            ("approach", "model", "status"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "optigraph_request_duration_seconds",
            "Run latency, from its start (the request validated) to its end",
            ("approach", "model"),
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.input_tokens = Counter(
            "optigraph_input_tokens",
            "Prompt tokens spent upstream, by approach and model",
            ("approach", "model"),
            registry=r,
        )
        self.output_tokens = Counter(
            "optigraph_output_tokens",
            "Completion tokens spent upstream (reasoning included), by approach and model",
            ("approach", "model"),
            registry=r,
        )
        self.upstream_calls = Counter(
            "optigraph_upstream_calls",
            "Upstream requests (each attempt), by backend, model and outcome",
            ("backend", "model", "outcome"),
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "optigraph_upstream_call_duration_seconds",
            "Upstream request latency (each attempt)",
            ("backend", "model", "outcome"),
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "optigraph_upstream_retries",
            "Upstream attempts after the first of a call",
            ("backend", "model"),
            registry=r,
        )
        self.in_flight = Gauge(
            "optigraph_runs_in_flight",
            "Runs executing now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.breaker = Gauge(
            "optigraph_circuit_breaker_state",
            "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open",
            ("backend",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.http_responses = Counter(
            "optigraph_http_responses",
            "HTTP responses, by status code",
            ("code",),
            registry=r,
        )

    # ---- recording ------------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def run_finished(
        self, *, approach: str, model: str, status: str, seconds: float, input_tokens: int, output_tokens: int
    ) -> None:
        """One finished run (any status)."""
        ok = status == "completed"
        a, m = self.approach(approach, admit=ok), self.model(model, admit=ok)
        self._child(self.requests, a, m, status).inc()
        self._child(self.request_seconds, a, m).observe(seconds)
        if input_tokens:
            self._child(self.input_tokens, a, m).inc(input_tokens)
        if output_tokens:
            self._child(self.output_tokens, a, m).inc(output_tokens)

    def upstream_call(self, *, backend: str, model: str, outcome: str, seconds: float, attempt: int) -> None:
        """One upstream attempt; `outcome` is ok, error, timeout or cancelled."""
        m = self.model(model, admit=outcome == "ok")
        self._child(self.upstream_calls, backend, m, outcome).inc()
        self._child(self.upstream_seconds, backend, m, outcome).observe(seconds)
        if attempt > 1:
            self._child(self.retries, backend, m).inc()

    def run_began(self) -> None:
        self.in_flight.inc()

    def run_ended(self) -> None:
        self.in_flight.dec()

    def set_breaker_state(self, backend: str, state: str) -> None:
        """What a circuit breaker calls when it changes state (closed, half_open or open)."""
        self._child(self.breaker, backend).set(BREAKER_STATES[state])

    def http_response(self, code: int) -> None:
        self._child(self.http_responses, str(code)).inc()

    # ---- exposition -----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type: this process's series, or, with several workers,
        every worker's (live gauges summed or maxed as each declares)."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
