"""`mcp` end to end: the real server on loopback with --mcp-config naming a real MCP server
(tests/mcp_server.py over stdio), the official openai client, a scripted upstream that calls the
server's tool and answers from its result, the run and its calls stored in SQLite."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, start_stack

SERVER = Path(__file__).resolve().parents[1] / "mcp_server.py"
QUESTION = [{"role": "user", "content": "Tell me a fact about Oslo."}]


@pytest.fixture(scope="module")
def tool_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-log") / "calls.log"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tool_log: Path) -> Iterator[Stack]:
    where = tmp_path_factory.mktemp("mcp")
    config = where / "mcp.json"
    config.write_text(
        json.dumps(
            {"mcpServers": {"facts": {"command": sys.executable, "args": [str(SERVER), "stdio", str(tool_log)]}}}
        )
    )
    with start_stack(where / "m.db", default_model="fake-model", mcp_config=config) as s:
        yield s


def respond(body: dict[str, Any], index: int) -> dict[str, Any] | str:
    results = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
    if results:
        return f"Did you know? {results[-1]}"
    if "lookup" not in [t["function"]["name"] for t in body.get("tools") or []]:
        return "I have no tools."
    return {
        "content": None,
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Oslo"}'}}
        ],
    }


def run_detail(stack: Stack, run_id: str) -> dict[str, Any]:
    stack.run(run_id)
    with stack.http() as http:
        return http.get(f"/v1/runs/{run_id}").json()


def test_mcp_tool_called_and_its_result_used(stack: Stack, tool_log: Path) -> None:
    stack.reset()
    tool_log.unlink(missing_ok=True)
    stack.script.fn = respond
    response = stack.client().chat.completions.create(model="mcp&none-fake-model", messages=QUESTION)

    assert response.choices[0].message.content == "Did you know? Oslo's city hall hands out the Nobel Peace Prize."
    assert response.choices[0].message.tool_calls is None
    assert response.model_extra["optigraph"]["upstream_calls"] == 2
    assert tool_log.read_text() == 'lookup\t{"city": "Oslo"}\n'  # run by the MCP server itself
    run_id = response.model_extra["optigraph"]["run_id"]
    detail = run_detail(stack, run_id)
    assert detail["status"] == "completed"
    assert [c["node"] for c in stack.calls(run_id)] == ["passthrough", "mcp.step"]
    steps = [t["name"] for step in detail["threads"][0]["steps"] for t in step["tasks"]]
    assert [n for n in steps if n.startswith("mcp.")] == ["mcp.pre", "mcp.run", "mcp.post"]
    assert 'mcp.post: answer 0 step 1: facts.lookup({\\"city\\": \\"Oslo\\"}) -> 49 chars' in json.dumps(detail)


def test_mcp_streamed_sends_the_answer_made_from_the_tool_result(stack: Stack, tool_log: Path) -> None:
    stack.reset()
    tool_log.unlink(missing_ok=True)
    stack.script.fn = respond
    stream = stack.client().chat.completions.create(model="mcp&none-fake-model", messages=QUESTION, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Did you know? Oslo's city hall hands out the Nobel Peace Prize."
    assert len(stack.log.bodies) == 2 and tool_log.read_text().count("lookup") == 1
