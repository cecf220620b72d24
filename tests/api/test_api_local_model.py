"""End to end on the real embedded model: the server with no upstream serves SmolLM2-135M-Instruct."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upstream import ServerThread  # noqa: E402

from optigraph.api.app import create_app  # noqa: E402
from optigraph.config import Settings  # noqa: E402


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    db = tmp_path_factory.mktemp("local") / "optigraph.db"
    with ServerThread(create_app(Settings(db_url=f"sqlite:///{db}"))) as server:
        yield server


def test_health_answers_while_the_model_loads_then_it_serves(local_server: ServerThread) -> None:
    started = time.perf_counter()
    health = httpx.get(f"{local_server.url}/health", timeout=5)
    assert health.status_code == 200 and time.perf_counter() - started < 5
    assert health.json()["local_model"] in ("not loaded", "loading", "ready")

    client = openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="unused", timeout=300)
    r = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        temperature=0, max_tokens=12)
    reply = r.parse()
    assert r.headers["x-optigraph-run-id"] == reply.model_extra["optigraph"]["run_id"]
    assert reply.model == "smollm2"
    assert reply.choices[0].message.content.strip()
    assert "paris" in reply.choices[0].message.content.lower()
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 12
    assert httpx.get(f"{local_server.url}/health", timeout=5).json()["local_model"] == "ready"


def test_an_approach_streams_on_the_local_model(local_server: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="unused", timeout=300)
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
            model="re2-smollm2", messages=[{"role": "user", "content": "Name a primary colour."}],
            temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2, "tokens arrive as they are generated, not in one piece"
    assert "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens > 0
