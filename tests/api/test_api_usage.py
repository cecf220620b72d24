"""One definition of a run's usage (core/usage.py): for every built-in approach, streamed or not,
completed or failed, the usage the client is given and the usage stored with the run both equal the
sum over the upstream calls stored for the run, failed attempts included."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from api_stack import Stack, start_stack
from upstream import HTTPFailure, echo_responder

from optigraph.engine.registry import builtin_registry

QUESTION = [{"role": "user", "content": "What is 6 times 7? End with: The answer is N."}]
# The mcp plugin needs MCP servers configured (--mcp-config): tests/api/test_api_mcp.py runs it; the
# proxy plugin needs providers (--proxy-config): tests/api/test_api_proxy.py runs it.
APPROACHES = sorted(
    spec.name for spec in builtin_registry().specs.values() if not {"local", "mcp", "proxy"} & set(spec.needs)
)
PARAMS = {"mars": {"lightweight": True}}


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory.mktemp("usage") / "u.db", upstream={"reasoning_tokens": 2}, default_model="fake-model"
    ) as s:
        yield s


def sometimes_failing() -> Any:
    """The first call fails and is retried (503); every 5th fails for good (400); every 7th is empty
    (a node may raise on it after the call was paid for)."""
    counter = itertools.count()

    def respond(body: dict[str, Any], index: int) -> Any:
        k = next(counter)
        if k % 5 == 0:
            return HTTPFailure(503, "busy")
        if k % 5 == 4:
            return HTTPFailure(400, "refused")
        if k % 7 == 6:
            return ""
        return echo_responder(body, index)

    return respond


def stored_sum(stack: Stack, run_id: str) -> dict[str, int]:
    rows = stack.calls(run_id)
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    return {
        "calls": len(rows),
        "failed": sum(r["status"] != "ok" for r in rows),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "reasoning_tokens": sum(r["reasoning_tokens"] for r in rows),
    }


def given(usage: dict[str, Any], calls: int) -> dict[str, int]:
    return {
        "calls": calls,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
    }


def stored_run(stack: Stack, run_id: str) -> dict[str, int]:
    run = stack.run(run_id)
    return {k: run[k] for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens")}


def body(approach: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": f"{approach}-fake-model",
        "messages": QUESTION,
        "max_tokens": 256,
        **({"optillm_params": {approach: PARAMS[approach]}} if approach in PARAMS else {}),
        **extra,
    }


@pytest.mark.parametrize("approach", APPROACHES)
def test_usage_is_the_sum_of_the_stored_calls(flaky: Stack, approach: str) -> None:
    flaky.reset()
    flaky.script.fn = sometimes_failing()
    with flaky.http() as http:
        r = http.post("/v1/chat/completions", json=body(approach))
    run_id = r.headers["x-optigraph-run-id"]
    run = stored_run(flaky, run_id)  # once the run is stored as ended, so are its calls
    rows = stored_sum(flaky, run_id)
    assert rows["failed"] >= 1  # the first call failed at least
    expected = {k: v for k, v in rows.items() if k != "failed"}
    if r.status_code == 200:
        out = r.json()
        assert out["optigraph"]["upstream_calls"] == rows["calls"]
        assert given(out["usage"], out["optigraph"]["upstream_calls"]) == expected
    else:
        assert r.json()["error"]["message"]
    assert int(r.headers["x-optigraph-upstream-calls"]) == rows["calls"]
    assert run == expected


@pytest.mark.parametrize("approach", APPROACHES)
def test_streamed_usage_is_the_sum_of_the_stored_calls(flaky: Stack, approach: str) -> None:
    flaky.reset()
    flaky.script.fn = sometimes_failing()
    with (
        flaky.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body(approach, stream=True, stream_options={"include_usage": True})
        ) as r,
    ):
        run_id = r.headers["x-optigraph-run-id"]
        events = [
            orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"
        ]
    run = stored_run(flaky, run_id)
    rows = stored_sum(flaky, run_id)
    expected = {k: v for k, v in rows.items() if k != "failed"}
    usage = [e for e in events if e.get("usage")]
    if usage:  # completed: the usage chunk says what the stored calls sum to
        assert given(usage[-1]["usage"], usage[-1]["optigraph"]["upstream_calls"]) == expected
    else:
        assert r.status_code != 200 or any("error" in e for e in events)
    assert run == expected


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["fake-model", "none&none-fake-model"])
def test_a_failed_run_counts_every_attempt(flaky: Stack, model: str, stream: bool) -> None:
    flaky.reset()
    flaky.script.fn = lambda body, index: HTTPFailure(503, "down")
    with flaky.http() as http:
        r = http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "stream": stream})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    run = flaky.run(r.headers["x-optigraph-run-id"])
    attempts = 1 + flaky.settings.upstream_retries
    assert run["status"] == "failed" and run["calls"] == attempts == len(flaky.log.bodies)
    assert len(flaky.calls(run["id"])) == attempts
