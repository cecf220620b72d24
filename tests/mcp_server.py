"""A real MCP server for the mcp plugin's tests, written with the SDK's MCPServer.

    python tests/mcp_server.py stdio LOG                 # over stdin/stdout
    python tests/mcp_server.py http LOG PORT_FILE        # streamable HTTP on a free loopback port

Tools: `add(a, b)`, `lookup(city)` (a fact about a city; an unknown city is an error with its reason), `fail()`
(always raises) and `crash()` (the process exits in the middle of the call). A resource `facts://cities` and a prompt `travel_tips`. Every tool call appends a
line `tool<TAB>json args` to LOG, so a test sees what the server really ran.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

FACTS = {"paris": "Paris has 20 arrondissements.", "oslo": "Oslo's city hall hands out the Nobel Peace Prize."}

server = MCPServer("facts")
LOG = Path(sys.argv[2]) if len(sys.argv) > 2 else None


def _logged(tool: str, **args: object) -> None:
    if LOG is not None:
        with LOG.open("a", encoding="utf-8") as f:
            f.write(f"{tool}\t{json.dumps(args, sort_keys=True)}\n")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    _logged("add", a=a, b=b)
    return a + b


@server.tool()
def lookup(city: str) -> str:
    """A fact about a city."""
    _logged("lookup", city=city)
    fact = FACTS.get(city.strip().lower())
    if fact is None:
        raise ToolError(f"no fact about {city!r}")  # a ToolError's text reaches the client
    return fact


@server.tool()
def fail() -> str:
    """Always fails."""
    _logged("fail")
    raise RuntimeError("the fact database is down")


@server.tool()
def crash() -> str:
    """Ends the server process in the middle of the call."""
    _logged("crash")
    os._exit(3)


@server.resource("facts://cities")
def cities() -> str:
    """The cities this server knows."""
    return ", ".join(sorted(FACTS))


@server.prompt()
def travel_tips(city: str) -> str:
    """Ask for travel tips about a city."""
    return f"Give three travel tips for {city}."


async def serve_http(port_file: Path) -> None:
    """Streamable HTTP on a loopback socket bound here (no race for the port); its port goes to `port_file`
    once the server accepts connections."""
    import asyncio

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    while not uv.started:
        await asyncio.sleep(0.02)
    port_file.write_text(str(sock.getsockname()[1]), encoding="utf-8")
    await task


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import asyncio

        asyncio.run(serve_http(Path(sys.argv[3])))
