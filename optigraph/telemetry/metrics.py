"""Prometheus metrics: what the server serves, what it spends upstream, and how it stands.

One `Metrics` object per application, on its own `CollectorRegistry` (never the library's global
one). The series are listed in docs/operations.md. Every label value is bounded: approach and model
names pass through `LabelFolder`s, statuses and outcomes are fixed sets, and no run id or prompt text
is ever a label.

Several worker processes: prometheus-client's multiprocess mode. Each process writes its values to
memory-mapped files in the directory named by PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker
reads them all (`render`). `prepare_multiprocess_dir` is what a supervisor calls once before starting
its workers; `mark_worker_dead` when one exits. Without the variable every value lives in this process,
as plain numbers (`_PlainSeries`) that become Prometheus families when scraped: the client library's
metric objects cost about 80 k instructions per passthrough request (a lock and several calls per
value), these a tenth of that (docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

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


# name, help, label names, histogram buckets (None: a counter)
COUNTERS_AND_HISTOGRAMS: tuple[tuple[str, str, tuple[str, ...], tuple[float, ...] | None], ...] = (
    (
        "optigraph_requests",
        "Runs served, by approach expression, model and how the run ended",
        ("approach", "model", "status"),
        None,
    ),
    (
        "optigraph_request_duration_seconds",
        "Run latency, from its start (the request validated) to its end",
        ("approach", "model"),
        REQUEST_BUCKETS,
    ),
    ("optigraph_input_tokens", "Prompt tokens spent upstream, by approach and model", ("approach", "model"), None),
    (
        "optigraph_output_tokens",
        "Completion tokens spent upstream (reasoning included), by approach and model",
        ("approach", "model"),
        None,
    ),
    (
        "optigraph_upstream_calls",
        "Upstream requests (each attempt), by backend, model and outcome",
        ("backend", "model", "outcome"),
        None,
    ),
    (
        "optigraph_upstream_call_duration_seconds",
        "Upstream request latency (each attempt)",
        ("backend", "model", "outcome"),
        UPSTREAM_BUCKETS,
    ),
    ("optigraph_upstream_retries", "Upstream attempts after the first of a call", ("backend", "model"), None),
    ("optigraph_http_responses", "HTTP responses, by status code", ("code",), None),
)
IN_FLIGHT = ("optigraph_runs_in_flight", "Runs executing now")
BREAKER = ("optigraph_circuit_breaker_state", "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open")


class _PlainSeries:
    """One counter or histogram of this process: label values -> a number, or -> per-bucket counts
    (the last for +Inf) and the sum. Turned into a Prometheus family only when scraped."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None) -> None:
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, buckets
        self.values: dict[tuple[str, ...], Any] = {}

    def inc(self, labels: tuple[str, ...], amount: float) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        assert self.buckets is not None
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        counts[bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
        counts[-1] += value

    def family(self) -> Metric:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.help, labels=self.labels)
            for labels, value in list(self.values.items()):
                counter.add_metric(labels, value)
            return counter
        histogram = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for labels, counts in list(self.values.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, counts[:-1], strict=True):
                total += count
                cumulative.append((bound, total))
            histogram.add_metric(labels, cumulative, sum_value=counts[-1])
        return histogram


class _LibrarySeries:
    """One series of prometheus-client (several workers share its values through files), with the
    same two methods as `_PlainSeries`. Each labelled child is kept once looked up (the library's
    `labels()` validates on every call); as bounded as the labels are."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, labels: tuple[str, ...]) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        return child

    def inc(self, labels: tuple[str, ...], amount: float) -> None:
        self.child(labels).inc(amount)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.child(labels).observe(value)


class _PlainCollector:
    """The scrape of a `Metrics` kept as plain numbers."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m._lock:
            yield from (series.family() for series in m._series.values() if isinstance(series, _PlainSeries))
            yield GaugeMetricFamily(*IN_FLIGHT, value=m._in_flight)
            breaker = GaugeMetricFamily(*BREAKER, labels=("backend",))
            for backend, state in m._breaker.items():
                breaker.add_metric((backend,), state)
            yield breaker


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
        self.approach = LabelFolder(approaches, max_names)
        self.model = LabelFolder(models, max_names)
        self._lock = threading.Lock()
        # One worker: plain numbers, collected when scraped. Several: the client library's objects,
        # whose values it keeps in the files every worker's scrape reads.
        self._direct = multiprocess_dir() is not None
        self._in_flight = 0.0
        self._breaker: dict[str, float] = {}
        self._series: dict[str, _PlainSeries | _LibrarySeries] = {}
        self._in_flight_gauge: Any = None  # with several workers, the live gauges: runs in flight...
        self._breaker_series: _LibrarySeries | None = None  # ...and breaker states
        if not self._direct:
            self._series = {spec[0]: _PlainSeries(*spec) for spec in COUNTERS_AND_HISTOGRAMS}
            self.registry.register(_PlainCollector(self))
            # The process's own figures (CPU seconds, memory, open files; garbage collections by
            # generation), read when scraped. Not with several workers: the library's multiprocess mode
            # has no way to merge them, and each worker's would be a different process's.
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            return
        for name, help_text, labels, buckets in COUNTERS_AND_HISTOGRAMS:
            if buckets is None:
                metric = Counter(name, help_text, labels, registry=self.registry)
            else:
                metric = Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)
            self._series[name] = _LibrarySeries(metric)
        self._in_flight_gauge = Gauge(*IN_FLIGHT, registry=self.registry, multiprocess_mode="livesum")
        self._breaker_series = _LibrarySeries(
            Gauge(*BREAKER, ("backend",), registry=self.registry, multiprocess_mode="livemax")
        )

    # ---- recording ------------------------------------------------------------------------------

    def run_finished(
        self, *, approach: str, model: str, status: str, seconds: float, input_tokens: int, output_tokens: int
    ) -> None:
        """One finished run (any status)."""
        ok = status == "completed"
        labels = (self.approach(approach, admit=ok), self.model(model, admit=ok))
        series = self._series
        with self._lock:
            series["optigraph_requests"].inc((*labels, status), 1.0)
            series["optigraph_request_duration_seconds"].observe(labels, seconds)
            if input_tokens:
                series["optigraph_input_tokens"].inc(labels, input_tokens)
            if output_tokens:
                series["optigraph_output_tokens"].inc(labels, output_tokens)

    def upstream_call(self, *, backend: str, model: str, outcome: str, seconds: float, attempt: int) -> None:
        """One upstream attempt; `outcome` is ok, error, timeout or cancelled."""
        m = self.model(model, admit=outcome == "ok")
        series = self._series
        with self._lock:
            series["optigraph_upstream_calls"].inc((backend, m, outcome), 1.0)
            series["optigraph_upstream_call_duration_seconds"].observe((backend, m, outcome), seconds)
            if attempt > 1:
                series["optigraph_upstream_retries"].inc((backend, m), 1.0)

    def run_began(self) -> None:
        if self._direct:
            self._in_flight_gauge.inc()
        else:
            with self._lock:
                self._in_flight += 1

    def run_ended(self) -> None:
        if self._direct:
            self._in_flight_gauge.dec()
        else:
            with self._lock:
                self._in_flight -= 1

    def set_breaker_state(self, backend: str, state: str) -> None:
        """What a circuit breaker calls when it changes state (closed, half_open or open)."""
        value = BREAKER_STATES[state]
        with self._lock:
            if self._direct:
                assert self._breaker_series is not None
                self._breaker_series.child((backend,)).set(value)
            else:
                self._breaker[backend] = value

    def http_response(self, code: int) -> None:
        with self._lock:
            self._series["optigraph_http_responses"].inc((str(code),), 1.0)

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
