"""GET /metrics after real requests through a real server (the official openai client): counts,
labels and their bounds, the key it does not need, and the sum over several server processes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from api_stack import Stack, start_stack
from prometheus_client.parser import text_string_to_metric_families
from upstream import HTTPFailure, ServerThread, make_app, serve_process

HELLO = [{"role": "user", "content": "hello there"}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[Samples, str]:
    resp = httpx.get(url + "/metrics", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, resp.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name}


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server that requires a key, retries once, and gives one model name past the known ones a label."""
    db = tmp_path_factory.mktemp("metrics") / "o.db"
    with start_stack(db, default_model="fake-model", api_key="k", upstream_retries=1, metrics_max_names=1) as s:
        yield s


def test_runs_calls_tokens_and_failures_are_counted_by_approach_model_and_status(metered: Stack) -> None:
    metered.reset()
    client = metered.client(api_key="k")
    plain = [client.chat.completions.create(model="fake-model", messages=HELLO) for _ in range(2)]
    chunks = list(
        client.chat.completions.create(
            model="fake-model", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    [streamed_usage] = [c.usage for c in chunks if c.usage]
    moa = client.chat.completions.create(model="moa-fake-model", messages=HELLO)
    ok_calls = len(metered.log.bodies)
    assert ok_calls == 3 + moa.model_extra["optigraph"]["upstream_calls"]

    metered.script.fn = lambda body, i: HTTPFailure(500, "the upstream is on fire")
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="fake-model", messages=HELLO)
    assert failed.value.status_code == 502

    samples, text = scrape(metered.url)
    assert value(samples, "optigraph_requests_total", approach="none", model="fake-model", status="completed") == 3
    assert value(samples, "optigraph_requests_total", approach="moa", model="fake-model", status="completed") == 1
    assert value(samples, "optigraph_requests_total", approach="none", model="fake-model", status="failed") == 1
    assert value(samples, "optigraph_request_duration_seconds_count", approach="none", model="fake-model") == 4
    up = {"backend": "openai", "model": "fake-model"}
    assert value(samples, "optigraph_upstream_calls_total", **up, outcome="ok") == ok_calls
    assert value(samples, "optigraph_upstream_calls_total", **up, outcome="error") == 2  # the try and its retry
    assert value(samples, "optigraph_upstream_call_duration_seconds_count", **up, outcome="ok") == ok_calls
    assert value(samples, "optigraph_upstream_retries_total", **up) == 1
    none_in = sum(r.usage.prompt_tokens for r in plain) + streamed_usage.prompt_tokens
    none_out = sum(r.usage.completion_tokens for r in plain) + streamed_usage.completion_tokens
    assert value(samples, "optigraph_input_tokens_total", approach="none", model="fake-model") == none_in
    assert value(samples, "optigraph_output_tokens_total", approach="none", model="fake-model") == none_out
    assert value(samples, "optigraph_input_tokens_total", approach="moa", model="fake-model") == moa.usage.prompt_tokens
    assert value(samples, "optigraph_output_tokens_total", approach="moa", model="fake-model") == (
        moa.usage.completion_tokens
    )
    assert value(samples, "optigraph_runs_in_flight") == 0
    assert value(samples, "optigraph_http_responses_total", code="502") == 1
    for r in (*plain, moa):  # no run id, no prompt text in any label
        assert r.model_extra["optigraph"]["run_id"] not in text
    assert "hello there" not in text


def test_model_names_past_the_cap_or_never_answered_are_folded_into_other(metered: Stack) -> None:
    metered.reset()
    client = metered.client(api_key="k")
    client.chat.completions.create(model="alpha", messages=HELLO)  # answered: takes the one free label
    client.chat.completions.create(model="beta", messages=HELLO)  # answered, but the cap is reached
    metered.script.fn = lambda body, i: HTTPFailure(404, "no such model")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gamma", messages=HELLO)  # never answered: not a name of its own
    samples, text = scrape(metered.url)
    models = label_values(samples, "optigraph_requests_total", "model")
    assert {"alpha", "other"} <= models and not {"beta", "gamma"} & models
    assert value(samples, "optigraph_requests_total", approach="none", model="alpha", status="completed") == 1
    assert value(samples, "optigraph_requests_total", approach="none", model="other", status="completed") == 1
    assert value(samples, "optigraph_requests_total", approach="none", model="other", status="failed") == 1
    assert "beta" not in text and "gamma" not in text


def test_metrics_need_no_key_like_health_and_can_be_turned_off(metered: Stack, tmp_path: Path) -> None:
    assert httpx.get(metered.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(metered.url + "/metrics", timeout=30).status_code == 200
    with start_stack(tmp_path / "o.db", default_model="fake-model", metrics=False) as off:
        resp = httpx.get(off.url + "/metrics", timeout=30)
        assert resp.status_code == 404 and "--metrics off" in resp.json()["error"]["message"]
        assert off.client().chat.completions.create(model="fake-model", messages=HELLO).choices


def test_several_server_processes_sharing_the_metrics_directory_are_scraped_as_one(tmp_path: Path) -> None:
    """Multiprocess mode (PROMETHEUS_MULTIPROC_DIR), as `serve --workers N` runs it: a scrape of either
    process counts the requests both served."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with ServerThread(make_app()) as up, ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(serve_process, tmp_path / f"{i}.db", up.url, env=env) for i in (1, 2)]
        (first, url1), (second, url2) = (f.result() for f in starting)  # started together: each takes a while
        try:
            try:
                for url, count in ((url1, 1), (url2, 2)):
                    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
                    for _ in range(count):
                        client.chat.completions.create(model="fake-model", messages=HELLO)
                for url in (url1, url2):
                    samples, _ = scrape(url)
                    labels = {"approach": "none", "model": "fake-model", "status": "completed"}
                    assert value(samples, "optigraph_requests_total", **labels) == 3
                    assert (
                        value(
                            samples,
                            "optigraph_upstream_calls_total",
                            backend="openai",
                            model="fake-model",
                            outcome="ok",
                        )
                        == 3
                    )
                    assert value(samples, "optigraph_runs_in_flight") == 0
            finally:
                second.terminate()
                second.communicate(timeout=30)
        finally:
            first.terminate()
            first.communicate(timeout=30)
