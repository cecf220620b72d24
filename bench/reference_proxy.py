"""A minimal forwarding proxy, as a yardstick for bench/passthrough.py --reference.

    python bench/reference_proxy.py --port 9001 --upstream http://127.0.0.1:9000/v1

POST /v1/chat/completions: parse the JSON body, send it upstream with a pooled aiohttp client,
parse the answer and send it back. No validation, no approach, no recording: roughly the least a
Python proxy on the same stack (uvicorn, uvloop, httptools, Starlette, aiohttp, orjson) can do.
"""

from __future__ import annotations

import argparse

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(upstream: str) -> Starlette:
    target = upstream.rstrip("/") + "/chat/completions"
    state: dict[str, aiohttp.ClientSession] = {}

    async def chat(request: Request) -> Response:
        session = state.get("session")
        if session is None:
            session = state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        body = orjson.loads(await request.body())
        async with session.post(target, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
            status, data = r.status, orjson.loads(await r.read())
        return Response(orjson.dumps(data), status_code=status, media_type="application/json")

    async def health(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="upstream base URL ending in /v1")
    args = p.parse_args()
    uvicorn.run(
        make_app(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
