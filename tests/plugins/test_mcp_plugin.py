"""mcp: a real MCP server (tests/mcp_server.py) over stdio and streamable HTTP; its tools offered to a
scripted model, the calls the model makes run on the server, the results fed back, the step limit
kept, server errors shown to the model, the client's own tools left to the client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_stack import make_runner
from scripted import ScriptedBackend
from test_executecode import content, run_state

from optigraph.errors import InvalidRequest, McpConfigError
from optigraph.plugins.mcp_servers import load_config
from optigraph.plugins.mcp_tools import function_names

SERVER = Path(__file__).resolve().parents[1] / "mcp_server.py"
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a fact about Paris."}]


def tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m.get("role") == "tool"]


def offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def fact_model(body: dict[str, Any]) -> dict[str, Any] | str:
    """Calls `lookup` first, then answers from what the tool returned."""
    results = tool_results(body)
    if results:
        return f"Here is a fact: {results[-1]}"
    return {"content": None, "tool_calls": [tool_call("lookup", {"city": "Paris"})]}


def write_config(path: Path, servers: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def stdio_entry(log: Path) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(SERVER), "stdio", str(log)]}


def calls_made(log: Path) -> list[tuple[str, dict[str, Any]]]:
    if not log.exists():
        return []
    return [(line.split("\t")[0], json.loads(line.split("\t")[1])) for line in log.read_text().splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


@pytest.fixture
def stdio_config(tmp_path: Path, log: Path) -> Path:
    return write_config(tmp_path / "mcp.json", {"facts": stdio_entry(log)})


@pytest.fixture
def http_url(tmp_path: Path, log: Path) -> Iterator[str]:
    """The server over streamable HTTP in its own process, on a loopback port it chose."""
    port_file = tmp_path / "port"
    process = subprocess.Popen([sys.executable, str(SERVER), "http", str(log), str(port_file)])
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert process.poll() is None, "the MCP server exited before it listened"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_a_stdio_servers_tool_is_called_and_its_result_used(stdio_config: Path, log: Path) -> None:
    backend = ScriptedBackend(fact_model)
    state = await run_state(
        make_runner(backend, mcp_config=stdio_config), {"model": "mcp&none-m", "messages": QUESTION}
    )

    assert content(state) == "Here is a fact: Paris has 20 arrondissements."
    assert calls_made(log) == [("lookup", {"city": "Paris"})]  # the server really ran it
    first, second = backend.calls
    assert len(backend.calls) == 2
    assert offered(first) == ["add", "lookup", "fail", "crash"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    # resources and prompts listed in a system turn after the client's own
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    listing = first["messages"][1]["content"]
    assert first["messages"][1]["role"] == "system" and "facts://cities" in listing and "travel_tips(city)" in listing
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Paris has 20 arrondissements.",
    }
    notes = " ".join(state["notes"])
    assert "mcp.pre: facts (stdio): 4 tools, 1 resources, 1 prompts" in notes
    assert 'mcp.post: answer 0 step 1: facts.lookup({"city": "Paris"}) -> 29 chars' in notes


async def test_a_streamable_http_servers_tools_are_called(tmp_path: Path, log: Path, http_url: str) -> None:
    config = write_config(tmp_path / "mcp.json", {"remote": {"url": http_url}})

    def model(body: dict[str, Any]) -> dict[str, Any] | str:
        results = tool_results(body)
        if results:
            return f"The sum is {results[-1]}."
        return {"content": "Adding.", "tool_calls": [tool_call("add", {"a": 19, "b": 23})]}

    backend = ScriptedBackend(model)
    state = await run_state(make_runner(backend, mcp_config=config), {"model": "mcp&none-m", "messages": QUESTION})
    assert content(state) == "The sum is 42."
    assert calls_made(log) == [("add", {"a": 19, "b": 23})]
    assert "mcp.pre: remote (http): 4 tools" in " ".join(state["notes"])


async def test_the_step_limit_is_kept_and_the_last_step_asks_for_an_answer(stdio_config: Path, log: Path) -> None:
    def model(body: dict[str, Any]) -> dict[str, Any]:
        step = len(tool_results(body))
        return {"content": f"still adding ({step})", "tool_calls": [tool_call("add", {"a": step, "b": 1}, f"c{step}")]}

    backend = ScriptedBackend(model)
    state = await run_state(
        make_runner(backend, mcp_config=stdio_config),
        {"model": "mcp&none-m", "messages": QUESTION, "optillm_params": {"mcp": {"max_steps": 2}}},
    )
    assert len(backend.calls) == 3  # the wrapped call and two steps
    assert [c.get("tool_choice") for c in backend.calls] == [None, None, "none"]
    assert [args for _, args in calls_made(log)] == [{"a": 0, "b": 1}, {"a": 1, "b": 1}]
    answer = state["answers"][0]
    assert "tool_calls" not in answer["message"] and answer["message"]["content"] == "still adding (2)"
    assert "mcp.post: answer 0: step limit (2) reached" in " ".join(state["notes"])


async def test_server_errors_and_bad_calls_become_tool_messages(stdio_config: Path, log: Path) -> None:
    def model(body: dict[str, Any]) -> dict[str, Any] | str:
        results = tool_results(body)
        if results:
            return "Sorry: " + " | ".join(results)
        bad_json = {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}
        calls = [
            tool_call("lookup", {"city": "Atlantis"}, "a"),
            tool_call("fail", {}, "b"),
            bad_json,
            tool_call("teleport", {}, "d"),
        ]
        return {"content": None, "tool_calls": calls}

    backend = ScriptedBackend(model)
    body = {"model": "mcp&none-m", "messages": QUESTION}
    state = await run_state(make_runner(backend, mcp_config=stdio_config), body)
    results = tool_results(backend.calls[1])
    assert results[0].startswith("Error:") and "Atlantis" in results[0]  # the server's own message
    assert results[1].startswith("Error:")
    assert results[2].startswith("Error: the arguments are not valid JSON")
    assert results[3] == "Error: there is no tool named 'teleport'"
    assert content(state).startswith("Sorry: Error:")
    assert [name for name, _ in calls_made(log)] == ["lookup", "fail"]  # bad JSON and unknown names never sent
    assert "facts.lookup" in " ".join(state["notes"]) and "error:" in " ".join(state["notes"])


async def test_a_server_that_dies_in_a_call_is_an_error_the_model_sees(stdio_config: Path, log: Path) -> None:
    def model(body: dict[str, Any]) -> dict[str, Any] | str:
        results = tool_results(body)
        if results:
            return "The tools failed: " + " | ".join(results)
        return {"content": None, "tool_calls": [tool_call("crash", {}, "a"), tool_call("add", {"a": 1, "b": 2}, "b")]}

    backend = ScriptedBackend(model)
    state = await run_state(
        make_runner(backend, mcp_config=stdio_config), {"model": "mcp&none-m", "messages": QUESTION}
    )
    results = tool_results(backend.calls[1])
    assert len(results) == 2 and all(r.startswith("Error: the tool could not be called") for r in results)
    assert content(state).startswith("The tools failed: Error:")
    assert [name for name, _ in calls_made(log)] == ["crash"]


async def test_a_config_broken_after_the_start_fails_the_run_with_its_reason(stdio_config: Path) -> None:
    runner = make_runner(ScriptedBackend(fact_model), mcp_config=stdio_config)
    stdio_config.write_text("{not json", encoding="utf-8")
    with pytest.raises(McpConfigError, match="cannot read it"):
        await run_state(runner, {"model": "mcp&none-m", "messages": QUESTION})


async def test_the_clients_own_tool_calls_go_to_the_client(stdio_config: Path, log: Path) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    both = [tool_call("get_weather", {}), tool_call("lookup", {"city": "Oslo"}, "c2")]
    backend = ScriptedBackend(lambda body: {"content": None, "tool_calls": both})
    state = await run_state(
        make_runner(backend, mcp_config=stdio_config), {"model": "mcp&none-m", "messages": QUESTION, "tools": [weather]}
    )
    assert offered(backend.calls[0]) == ["get_weather", "add", "lookup", "fail", "crash"]
    assert len(backend.calls) == 1 and calls_made(log) == []
    [call] = state["answers"][0]["message"]["tool_calls"]  # only what the client can run
    assert call["function"]["name"] == "get_weather"
    assert "sent to the client without its 1 MCP calls" in " ".join(state["notes"])


async def test_an_unreachable_server_is_left_out_and_the_others_still_work(tmp_path: Path, log: Path) -> None:
    config = write_config(
        tmp_path / "mcp.json", {"gone": {"command": str(tmp_path / "no-such-server")}, "facts": stdio_entry(log)}
    )
    backend = ScriptedBackend(fact_model)
    state = await run_state(make_runner(backend, mcp_config=config), {"model": "mcp&none-m", "messages": QUESTION})
    assert content(state) == "Here is a fact: Paris has 20 arrondissements."
    assert "mcp.pre: gone (stdio) not offered:" in " ".join(state["notes"])


async def test_without_a_config_the_plugin_is_a_400(tmp_path: Path) -> None:
    runner = make_runner(ScriptedBackend())
    with pytest.raises(InvalidRequest, match="--mcp-config"):
        await runner.prepare({"model": "mcp&none-m", "messages": QUESTION}, client_key=None)


@pytest.mark.parametrize(
    "servers, message",
    [
        ({"x": {"command": "a", "url": "http://h/mcp"}}, "either"),
        ({"x": {"url": "ftp://h/mcp"}}, "http://"),
        ({"x": {"command": "a", "args": "b"}}, "args"),
        ({"bad name": {"command": "a"}}, "name"),
    ],
)
def test_a_malformed_config_is_named(tmp_path: Path, servers: dict[str, Any], message: str) -> None:
    with pytest.raises(McpConfigError, match=message):
        load_config(write_config(tmp_path / "mcp.json", servers))
    with pytest.raises(McpConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_tool_names_clash_only_then_get_the_server_prefix() -> None:
    catalogs = {
        "a": {"tools": [{"name": "search"}, {"name": "read"}]},
        "b": {"tools": [{"name": "search"}, {"name": "get weather"}, {"name": "ping"}]},
    }
    names = function_names(catalogs, taken={"ping"})
    assert names == {
        "a__search": {"server": "a", "tool": "search"},
        "read": {"server": "a", "tool": "read"},
        "b__search": {"server": "b", "tool": "search"},
        "b__get_weather": {"server": "b", "tool": "get weather"},
        "b__ping": {"server": "b", "tool": "ping"},
    }
