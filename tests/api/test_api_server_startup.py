"""The server's start-up: what it builds is frozen out of the garbage collector's sight (api/server.py)."""

from __future__ import annotations

import asyncio
import gc
import socket

import uvicorn
from fastapi import FastAPI

from optigraph.api.server import Server, freeze_startup_objects


def test_freezing_keeps_objects_alive_and_out_of_full_collections() -> None:
    class Kept:
        pass

    kept = [Kept() for _ in range(3)]
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(k) in tracked for k in kept)  # frozen: no collection walks them
        assert all(isinstance(k, Kept) for k in kept)  # and still alive
        made_later = Kept()
        assert any(o is made_later for o in gc.get_objects(0))  # later objects are collected as usual
    finally:
        gc.unfreeze()


async def test_the_server_freezes_what_its_start_up_built() -> None:
    gc.unfreeze()
    app = FastAPI()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = Server(config, app=app, grace_s=0.0)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the server stopped before it started"
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    finally:
        server.should_exit = True
        await task
        gc.unfreeze()
