"""The MCP servers of the operator's config file, reached with the `mcp` SDK's client.

The file has the shape most MCP clients read:

    {"mcpServers": {
        "files": {"command": "uvx", "args": ["mcp-server-filesystem", "/srv/docs"], "env": {"KEY": "v"}},
        "search": {"url": "http://10.0.0.7:8000/mcp"}}}

A server with a `command` is started as a subprocess and spoken to over stdio; one with a `url` over
streamable HTTP. `Servers` is an async context manager: a server is connected the first time it is
needed and every connection (and subprocess) is closed when the block ends, so nothing outlives the
stage that opened it.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mcp import Client, StdioServerParameters

from optigraph.errors import McpConfigError

log = logging.getLogger(__name__)

SERVER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_PAGES = 20  # of one listing: a server that pages forever cannot hang a run


@dataclass(frozen=True)
class ServerConfig:
    """One server of the config file: a command run over stdio, or a streamable HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"


def load_config(path: str | Path) -> list[ServerConfig]:
    """The servers of the config file at `path`, in file order; McpConfigError naming the file and key."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise McpConfigError(f"MCP config {path}: cannot read it: {exc}") from None
    servers = raw.get("mcpServers") if isinstance(raw, dict) else None
    if not isinstance(servers, dict):
        raise McpConfigError(f'MCP config {path}: needs an object under "mcpServers"')
    return [_server(path, name, entry) for name, entry in servers.items()]


def _server(path: str | Path, name: str, entry: Any) -> ServerConfig:
    where = f"MCP config {path}: server {name!r}"
    if not SERVER_NAME.match(name):
        raise McpConfigError(f"{where}: a name is 1-64 letters, digits, '_', '-' or '.'")
    if not isinstance(entry, dict) or ("command" in entry) == ("url" in entry):
        raise McpConfigError(f'{where}: needs either "command" (stdio) or "url" (streamable HTTP)')
    if "url" in entry:
        url = entry["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise McpConfigError(f'{where}: "url" must be an http:// or https:// address')
        return ServerConfig(name=name, url=url)
    command, args, env = entry["command"], entry.get("args", []), entry.get("env", {})
    if not isinstance(command, str) or not command:
        raise McpConfigError(f'{where}: "command" must be a non-empty string')
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpConfigError(f'{where}: "args" must be a list of strings')
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise McpConfigError(f'{where}: "env" must map names to strings')
    return ServerConfig(name=name, command=command, args=tuple(args), env=dict(env))


def error_text(exc: BaseException) -> str:
    """What went wrong, in one line (the first leaf of an exception group: anyio wraps task failures)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Servers:
    """Connections to the configured servers, opened on first use and all closed on exit."""

    def __init__(self, configs: list[ServerConfig], *, timeout_s: float) -> None:
        self.configs = {c.name: c for c in configs}
        self.timeout_s = timeout_s
        self._clients: dict[str, Client] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        except Exception as close_exc:  # noqa: BLE001  (a server that died first must not fail the run on the way out)
            log.warning("closing MCP connections: %s", error_text(close_exc))

    async def client(self, name: str) -> Client:
        """The connected client of server `name` (connected now if it is not yet); raises on failure."""
        if name not in self._clients:
            config = self.configs[name]
            target: StdioServerParameters | str
            if config.command:
                target = StdioServerParameters(command=config.command, args=list(config.args), env=config.env or None)
            else:
                assert config.url is not None
                target = config.url
            client = Client(target, read_timeout_seconds=self.timeout_s, cache=None)
            self._clients[name] = await self._stack.enter_async_context(client)
        return self._clients[name]

    async def catalog(self, name: str) -> dict[str, Any]:
        """What server `name` offers: its tools (name, description, JSON schema), resources and prompts."""
        client = await self.client(name)
        tools = [
            {"name": t.name, "description": t.description or "", "schema": _schema(t)}
            for t in await _all(client.list_tools, "tools")
        ]
        resources, prompts = [], []
        capabilities = client.server_capabilities
        if capabilities.resources is not None:
            resources = [
                {"uri": str(r.uri), "name": r.name, "description": r.description or ""}
                for r in await _all(client.list_resources, "resources")
            ]
        if capabilities.prompts is not None:
            prompts = [
                {"name": p.name, "description": p.description or "", "arguments": [a.name for a in (p.arguments or [])]}
                for p in await _all(client.list_prompts, "prompts")
            ]
        return {"tools": tools, "resources": resources, "prompts": prompts}

    async def call(self, name: str, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Runs `tool` on server `name`: (its result as text, whether the server reported an error)."""
        client = await self.client(name)
        result = await client.call_tool(tool, arguments, read_timeout_seconds=self.timeout_s)
        return result_text(result), bool(result.is_error)


def _schema(tool: Any) -> dict[str, Any]:
    schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}
    return dict(schema) if isinstance(schema, dict) else {"type": "object", "properties": {}}


async def _all(method: Any, key: str) -> list[Any]:
    """Every item of a paginated listing (at most MAX_PAGES pages)."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await method(cursor=cursor)
        items += list(getattr(page, key))
        cursor = getattr(page, "next_cursor", None) or getattr(page, "nextCursor", None)
        if not cursor:
            break
    return items


def result_text(result: Any) -> str:
    """A tool result as text for the model: its text blocks; other blocks named by kind."""
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts)
