"""The access log: one line per request, as text or JSON, with the run's approach, model, status,
tokens and calls; never the prompt or a key unless the operator asks for prompts (--log-prompts)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import httpx
import openai
import pytest
from api_stack import Stack, start_stack
from upstream import ServerThread, make_app, serve_process

SECRET_PROMPT = "the zebra-7731 crosses at midnight"
KEY = "sk-server-key-5519"


def test_json_logs_have_one_line_per_request_without_prompt_or_key(tmp_path: Path) -> None:
    with ServerThread(make_app()) as up:
        proc, url = serve_process(tmp_path / "o.db", up.url, "--log-format", "json", "--api-key", KEY, log_level="info")
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
            messages = [{"role": "user", "content": SECRET_PROMPT}]
            plain = client.chat.completions.with_raw_response.create(model="fake-model", messages=messages)
            answer = plain.parse()
            streamed = list(
                client.chat.completions.create(
                    model="fake-model", messages=messages, stream=True, stream_options={"include_usage": True}
                )
            )
            refused = httpx.post(url + "/v1/chat/completions", json={"model": "fake-model", "messages": messages})
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=60)[0].decode()
    assert refused.status_code == 401
    assert SECRET_PROMPT not in output and "zebra" not in output and KEY not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # uvicorn's lines too
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    posts = [x for x in lines if x["logger"] == "optigraph.access" and x.get("path") == "/v1/chat/completions"]
    assert [x["status"] for x in posts] == [200, 200, 401]  # one line per request
    first, second, third = posts
    assert first["run_id"] == plain.headers["x-optigraph-run-id"] == answer.model_extra["optigraph"]["run_id"]
    assert (first["approach"], first["model"], first["run_status"]) == ("none", "fake-model", "completed")
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert first["upstream_calls"] == 1 and isinstance(first["latency_ms"], float) and first["level"] == "info"
    [usage] = [c.usage for c in streamed if c.usage]
    assert (second["run_status"], second["prompt_tokens"], second["completion_tokens"]) == (
        "completed",
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert third["run_id"] is None and "approach" not in third  # refused before any run


def test_prompts_are_logged_only_with_log_prompts(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [{"role": "user", "content": SECRET_PROMPT}]
    with caplog.at_level(logging.INFO, logger="optigraph.access"):
        stack.client(api_key=KEY).chat.completions.create(model="fake-model", messages=messages)
        with start_stack(tmp_path / "o.db", default_model="fake-model", log_prompts=True) as debugging:
            debugging.client(api_key=KEY).chat.completions.create(model="fake-model", messages=messages)
    [quiet, loud] = [r for r in caplog.records if r.name == "optigraph.access" and "/chat/" in r.getMessage()]
    assert SECRET_PROMPT not in quiet.getMessage() and "messages" not in quiet.fields
    assert loud.fields["messages"] == messages and SECRET_PROMPT in loud.getMessage()
    for record in (quiet, loud):  # the client's key is forwarded upstream here, never logged
        assert KEY not in record.getMessage() and KEY not in json.dumps(record.fields)
