"""The metrics object on its own: bounded labels, the breaker gauge, the multiprocess directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from optigraph.telemetry.metrics import MULTIPROC_ENV, OTHER, LabelFolder, Metrics, prepare_multiprocess_dir


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_a_folder_passes_known_names_and_admits_real_ones_up_to_its_cap() -> None:
    fold = LabelFolder({"known"}, cap=2)
    assert fold("known", admit=False) == "known"
    assert fold("typo", admit=False) == OTHER  # not admitted: it does not take a place
    assert [fold("a"), fold("b"), fold("c")] == ["a", "b", OTHER]
    assert fold("a", admit=False) == "a"  # once admitted, always its own label
    assert fold("typo") == OTHER  # the cap is reached


def test_each_metrics_object_has_its_own_registry_and_the_breaker_gauge() -> None:
    one, two = Metrics(), Metrics()
    one.set_breaker_state("openai", "open")
    one.upstream_call(backend="openai", model="m", outcome="timeout", seconds=0.5, attempt=2)
    samples = _samples(one)
    assert samples[("optigraph_circuit_breaker_state", frozenset({("backend", "openai")}))] == 2
    labels = frozenset({("backend", "openai"), ("model", OTHER), ("outcome", "timeout")})  # never answered
    assert samples[("optigraph_upstream_calls_total", labels)] == 1
    assert samples[("optigraph_upstream_retries_total", frozenset({("backend", "openai"), ("model", OTHER)}))] == 1
    assert not any(name == "optigraph_upstream_calls_total" for name, _ in _samples(two))
    with pytest.raises(KeyError):
        one.set_breaker_state("openai", "melted")


def test_one_process_reports_its_cpu_memory_and_garbage_collections() -> None:
    import gc

    samples = _samples(Metrics())
    before = samples[("python_gc_collections_total", frozenset({("generation", "2")}))]
    gc.collect()
    after = _samples(Metrics())[("python_gc_collections_total", frozenset({("generation", "2")}))]
    assert after == before + 1  # read when scraped, from this process's collector
    assert ("process_cpu_seconds_total", frozenset()) in samples
    assert samples[("process_resident_memory_bytes", frozenset())] > 0


def test_preparing_the_multiprocess_directory_clears_old_values_and_sets_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "unset-at-teardown")  # so the test process is left as it was
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    keep = tmp_path / "notes.txt"
    keep.write_text("not a metrics file")
    assert prepare_multiprocess_dir(tmp_path) == tmp_path
    assert not stale.exists() and keep.exists()
    assert os.environ[MULTIPROC_ENV] == str(tmp_path)


def _record(metrics: Metrics) -> None:
    """The same records, into either kind of Metrics."""
    metrics.run_began()
    metrics.run_began()
    metrics.run_ended()
    for seconds in (0.004, 0.005, 0.3, 7.0, 999.0):  # on a bound, between bounds, past the last
        metrics.run_finished(
            approach="none", model="m", status="completed", seconds=seconds, input_tokens=3, output_tokens=5
        )
    metrics.run_finished(approach="bon", model="m", status="failed", seconds=1.5, input_tokens=0, output_tokens=0)
    metrics.upstream_call(backend="openai", model="m", outcome="ok", seconds=0.02, attempt=1)
    metrics.upstream_call(backend="openai", model="m", outcome="timeout", seconds=60.0, attempt=2)
    metrics.set_breaker_state("openai", "half_open")
    metrics.http_response(200)
    metrics.http_response(200)
    metrics.http_response(429)


def test_one_worker_keeps_plain_numbers_that_scrape_as_the_client_librarys_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single process records into plain numbers; several workers into prometheus-client's own
    objects. The same records scrape to the same series either way (bar the library's `_created`)."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    plain = Metrics(models=frozenset({"m"}))
    assert plain._direct is False
    _record(plain)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    direct = Metrics(models=frozenset({"m"}))
    assert direct._direct is True
    _record(direct)
    want = {k: v for k, v in _samples(direct).items() if not k[0].endswith("_created")}
    got = _samples(plain)
    assert got == want
    bucket = frozenset({("approach", "none"), ("model", "m"), ("le", "0.005")})
    assert got[("optigraph_request_duration_seconds_bucket", bucket)] == 2  # 0.004 and 0.005 (le: at most)
    assert got[("optigraph_runs_in_flight", frozenset())] == 1
    assert got[("optigraph_http_responses_total", frozenset({("code", "200")}))] == 2
