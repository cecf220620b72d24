"""An optigraph server started inside the eval process, on a free loopback port, for `optigraph eval`
without `--base-url`: in front of the local model, or of an upstream given with `--upstream`."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from optigraph.sandbox import DEFAULT_LEVEL, SandboxLevel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessServer:
    """`with InProcessServer(upstream=..., db_path=...) as srv: srv.base_url` -> http://127.0.0.1:PORT/v1.

    The server runs in a daemon thread with its own event loop, so its work never shares a loop with
    the client measuring it. With no upstream it serves the local model and, on entering, waits until
    that model has loaded (so loading is not counted in the first problem's wall time).
    """

    def __init__(
        self,
        *,
        upstream: str | None,
        db_path: Path,
        upstream_api_key: str | None = None,
        start_timeout_s: float = 60.0,
        model_load_timeout_s: float = 900.0,
        sandbox_level: SandboxLevel = DEFAULT_LEVEL,
    ) -> None:
        self.upstream = upstream
        self.sandbox_level = sandbox_level
        self.db_path = db_path
        self.upstream_api_key = upstream_api_key
        self.start_timeout_s = start_timeout_s
        self.model_load_timeout_s = model_load_timeout_s
        self.port = free_port()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> InProcessServer:
        import uvicorn

        from optigraph.api.app import create_app
        from optigraph.config import Settings

        settings = Settings(
            host="127.0.0.1",
            port=self.port,
            base_url=self.upstream,
            approach="none",
            db_url=f"sqlite:///{self.db_path.resolve()}",
            log_level="warning",
            upstream_api_key=self.upstream_api_key,
            sandbox_level=self.sandbox_level,
        )
        app = create_app(settings)
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, name="optigraph-eval-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the in-process optigraph server did not start")
            time.sleep(0.02)
        if self.upstream is None:
            self._wait_for_local_model()
        return self

    def _wait_for_local_model(self) -> None:
        deadline = time.monotonic() + self.model_load_timeout_s
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while True:
                status = str(http.get("/health").json().get("local_model"))
                if status == "ready":
                    return
                if status.startswith("failed"):
                    self.__exit__()
                    raise RuntimeError(f"the local model could not be loaded: {status}")
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the local model did not load in time")
                time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
