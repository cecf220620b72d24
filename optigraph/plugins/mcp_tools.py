"""`mcp`: the tools of the operator's Model Context Protocol servers, offered to the model in a
tool-calling loop.

- `pre` connects to every server of the server's MCP config file (`--mcp-config`; stdio or streamable
  HTTP, see plugins/mcp_servers.py), lists its tools, resources and prompts, and closes the
  connections again. The tools are added to the request's `tools` as functions (named as the server
  names them; `server__tool` where two servers, or the client, use the same name), so whatever the
  plugin wraps calls the model with them; the resources and prompts are listed in a system turn
  after the conversation's leading system turns. A server that cannot be reached is left out and the
  notes say why.
- `post`: an answer that calls MCP tools gets them run on their servers; each result (or the error a
  server reported, or why the call could not be made) goes back to the model as a `tool` message and
  the model is called again with the same tools (node `mcp.step`), until it answers without tool
  calls or `max_steps` steps have run: the last step asks for an answer without tools
  (`tool_choice: "none"`). Every call is in the run's notes (server, tool, arguments, result size or
  error). The connections live for the stage and are closed when it ends.

The client's own tools are not MCP's: an answer calling one of them goes to the client (the client
runs it), with only the calls the client can run; MCP calls beside it are left out, as the notes say.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langgraph.runtime import Runtime
from pydantic import Field

from optigraph.core.context import RunContext
from optigraph.core.spec import ApproachParams, PluginSpec
from optigraph.core.state import Answer, PluginState
from optigraph.core.usage import add_usage, empty_usage
from optigraph.errors import InvalidRequest
from optigraph.nodes.common import answer_of, generation_params
from optigraph.plugins.mcp_servers import ServerConfig, Servers, error_text, load_config

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Client fields a step does not forward: it answers one choice, in full, and chooses its tools itself.
NOT_FORWARDED = ("n", "logprobs", "top_logprobs", "tool_choice")
GUIDE = (
    "Tools from MCP servers are available as functions; call them when they help, and their results "
    "come back as tool messages."
)


class McpParams(ApproachParams):
    max_steps: int = Field(
        5,
        ge=1,
        le=20,
        description="Most model calls after running tools, per answer; the last asks for an answer without tools.",
    )
    timeout_s: float = Field(
        30.0, gt=0, le=300, description="Time limit of a connection and of one tool call, in seconds."
    )
    max_result_chars: int = Field(
        8000, ge=100, le=100_000, description="Characters of one tool result given to the model (the first ones)."
    )


def _configs(runtime: Runtime[RunContext]) -> list[ServerConfig]:
    settings = runtime.context.settings
    path = getattr(settings, "mcp_config", None)
    if not path:
        raise InvalidRequest(
            "plugin 'mcp' needs an MCP config file, which this server runs without (--mcp-config)",
            param="model",
            code="approach_unsupported",
        )
    return load_config(path)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n[... {len(text) - limit} characters cut ...]"


def function_names(catalogs: dict[str, dict[str, Any]], taken: set[str]) -> dict[str, dict[str, str]]:
    """Function name -> {"server", "tool"}: the tool's own name where it is a valid function name used
    by no other server and not by the client (`taken`), else `server__tool` (made valid, at most 64)."""
    counts: dict[str, int] = {}
    for catalog in catalogs.values():
        for tool in catalog["tools"]:
            counts[tool["name"]] = counts.get(tool["name"], 0) + 1
    names: dict[str, dict[str, str]] = {}
    for server, catalog in catalogs.items():
        for tool in catalog["tools"]:
            name = tool["name"]
            if counts[name] > 1 or name in taken or not FUNCTION_NAME.match(name):
                name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{name}")[:64]
            if name not in names and name not in taken:
                names[name] = {"server": server, "tool": tool["name"]}
    return names


def _openai_tools(catalogs: dict[str, dict[str, Any]], names: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    by_tool = {(s, t["name"]): t for s, c in catalogs.items() for t in c["tools"]}
    tools = []
    for name, where in names.items():
        tool = by_tool[(where["server"], where["tool"])]
        schema = tool["schema"] if tool["schema"].get("type") == "object" else {"type": "object", "properties": {}}
        tools.append(
            {"type": "function", "function": {"name": name, "description": tool["description"], "parameters": schema}}
        )
    return tools


def summary(catalogs: dict[str, dict[str, Any]]) -> str:
    """The system turn that tells the model what the servers offer besides their tools."""
    lines = [GUIDE]
    for server, catalog in catalogs.items():
        lines.append(f"MCP server `{server}`: tools: {', '.join(t['name'] for t in catalog['tools']) or 'none'}.")
        for r in catalog["resources"]:
            lines.append(f"- resource {r['uri']} ({r['name']}){': ' + r['description'] if r['description'] else ''}")
        for p in catalog["prompts"]:
            lines.append(
                f"- prompt {p['name']}({', '.join(p['arguments'])})"
                f"{': ' + p['description'] if p['description'] else ''}"
            )
    return "\n".join(lines)


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    at = 0
    while at < len(messages) - 1 and messages[at].get("role") in ("system", "developer"):
        at += 1
    return [*messages[:at], {"role": "system", "content": text}, *messages[at:]]


async def pre(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    params = state.get("params") or {}
    configs = _configs(runtime)
    catalogs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    async with Servers(configs, timeout_s=float(params.get("timeout_s", 30.0))) as servers:
        for config in configs:
            try:
                catalog = await servers.catalog(config.name)
            except Exception as exc:  # noqa: BLE001  (an unreachable server is left out; the others still offered)
                notes.append(f"mcp.pre: {config.name} ({config.transport}) not offered: {error_text(exc)}")
                continue
            catalogs[config.name] = catalog
            notes.append(
                f"mcp.pre: {config.name} ({config.transport}): {len(catalog['tools'])} tools, "
                f"{len(catalog['resources'])} resources, {len(catalog['prompts'])} prompts"
            )
    request = dict(state.get("request") or {})
    client_tools = list(request.get("tools") or [])
    taken = {(t.get("function") or {}).get("name") for t in client_tools if isinstance(t, dict)}
    names = function_names(catalogs, {n for n in taken if n})
    private = {"functions": names, "client_tools": sorted(n for n in taken if n)}
    if not catalogs:
        return {"private": private, "notes": notes}
    tools = _openai_tools(catalogs, names)
    if tools:
        request["tools"] = client_tools + tools
    return {
        "messages": _with_system(state["messages"], summary(catalogs)),
        "request": request,
        "private": private,
        "notes": notes,
    }


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]


def _name(call: dict[str, Any]) -> str:
    return str((call.get("function") or {}).get("name") or "")


async def _execute(
    servers: Servers, where: dict[str, str], call: dict[str, Any], limit: int, label: str
) -> tuple[str, str]:
    """Runs one tool call: (the tool message's text, the note recording it). Never raises: what went
    wrong is the result, so the model sees it."""
    server, tool = where["server"], where["tool"]
    raw = (call.get("function") or {}).get("arguments") or "{}"
    shown = _clip(raw if isinstance(raw, str) else json.dumps(raw), 200)
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        text = f"Error: the arguments are not valid JSON ({exc})"
        return text, f"{label}: {server}.{tool}({shown}) -> not called: {text}"
    if not isinstance(arguments, dict):
        text = "Error: the arguments must be a JSON object"
        return text, f"{label}: {server}.{tool}({shown}) -> not called: {text}"
    try:
        result, failed = await servers.call(server, tool, arguments)
    except Exception as exc:  # noqa: BLE001  (the server is unreachable, died or timed out: the model is told)
        text = f"Error: the tool could not be called: {error_text(exc)}"
        return text, f"{label}: {server}.{tool}({shown}) -> {text}"
    if failed:
        text = f"Error: {_clip(result, limit)}"
        return text, f"{label}: {server}.{tool}({shown}) -> error: {_clip(result, 200)}"
    return _clip(result, limit), f"{label}: {server}.{tool}({shown}) -> {len(result)} chars"


def _client_only(answer: Answer, client_tools: set[str], label: str) -> tuple[Answer, str | None]:
    """The answer with only the calls the client can run, when it calls any of the client's tools."""
    calls = _calls(answer.get("message") or {})
    mine = [c for c in calls if _name(c) in client_tools]
    if not mine:
        return answer, None
    dropped = len(calls) - len(mine)
    note = f"{label}: calls the client's tools; sent to the client" + (
        f" without its {dropped} MCP calls" if dropped else ""
    )
    return {**answer, "message": {**answer["message"], "tool_calls": mine}}, note


async def _loop(
    state: PluginState, runtime: Runtime[RunContext], servers: Servers, index: int, answer: Answer
) -> tuple[Answer, list[str], dict[str, Any]]:
    """One answer after its MCP tool calls ran and the model answered from their results."""
    params = state.get("params") or {}
    private = state.get("private") or {}
    functions, client_tools = private.get("functions") or {}, set(private.get("client_tools") or ())
    max_steps, limit = int(params.get("max_steps", 5)), int(params.get("max_result_chars", 8000))
    client_params = generation_params(state)  # type: ignore[arg-type]  (PluginState has the `request` it reads)
    step_params = {k: v for k, v in client_params.items() if k not in NOT_FORWARDED}
    conversation = list(state["messages"])
    notes: list[str] = []
    usage = empty_usage()
    for step in range(1, max_steps + 1):
        label = f"mcp.post: answer {index} step {step}"
        answer, note = _client_only(answer, client_tools, label)
        message = answer.get("message") or {}
        calls = _calls(message)
        if note or not calls:
            return answer, notes + ([note] if note else []), usage
        calls = [{**c, "id": c.get("id") or f"call_{step}_{k}"} for k, c in enumerate(calls)]
        conversation.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        for call in calls:
            where = functions.get(_name(call))
            if where is None:  # a name the model made up: it is told, as with any failed call
                text = f"Error: there is no tool named {_name(call)!r}"
                call_note = f"{label}: unknown tool {_name(call)!r}; the model was told"
            else:
                text, call_note = await _execute(servers, where, call, limit, label)
            notes.append(call_note)
            conversation.append({"role": "tool", "tool_call_id": call["id"], "content": text})
        last = step == max_steps
        completion = await runtime.context.llm.chat(
            conversation, node="mcp.step", **{**step_params, **({"tool_choice": "none"} if last else {})}
        )
        usage = add_usage(usage, completion.usage)
        answer = answer_of(completion.choices[0])
    label = f"mcp.post: answer {index}"
    answer, note = _client_only(answer, client_tools, label)
    if note:
        return answer, notes + [note], usage
    message = answer.get("message") or {}
    if _calls(message):  # the model still calls tools although it was asked not to: it gets no more
        message = {k: v for k, v in message.items() if k != "tool_calls"}
        answer = {**answer, "message": {**message, "content": message.get("content") or ""}, "finish_reason": "stop"}
        notes.append(f"{label}: step limit ({max_steps}) reached; its further tool calls were not run")
    return answer, notes, usage


async def post(state: PluginState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    functions = (state.get("private") or {}).get("functions") or {}
    answers = list(state.get("answers") or [])
    if not any(_name(c) in functions for a in answers for c in _calls(a.get("message") or {})):
        return {}
    params = state.get("params") or {}
    notes: list[str] = []
    usage = empty_usage()
    # one answer after the other: the connections are shared, and opened and closed in this task
    async with Servers(_configs(runtime), timeout_s=float(params.get("timeout_s", 30.0))) as servers:
        for index, answer in enumerate(answers):
            answers[index], answer_notes, answer_usage = await _loop(state, runtime, servers, index, answer)
            notes += answer_notes
            usage = add_usage(usage, answer_usage)
    return {"answers": answers, "notes": notes, "usage": usage}


SPEC = PluginSpec(
    name="mcp",
    description="Offers the tools of the MCP servers in --mcp-config (stdio or streamable HTTP) to the model, runs "
    "the calls it makes and feeds the results back, up to max_steps steps; resources and prompts "
    "are listed to it.",
    pre=pre,
    post=post,
    params=McpParams,
    needs=frozenset({"mcp"}),
    calls="max_steps",
    rounds="max_steps",
)
