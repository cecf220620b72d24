"""Several server processes behind one port (`optigraph serve --workers N`).

The parent binds the listening socket, builds the app once (so a bad setting fails before anything
forks, and what the app draws at start, such as the web page's session secret, is the same in every
worker) and forks N workers. Each worker runs the app's lifespan itself: its own database pool,
recorder, backends and runner, on the one shared database. The kernel hands each new connection to
whichever worker accepts it first.

A worker that dies is started again; its runs were stored as `running` and are resumed through the
run leases like those of any crashed server (engine/resume.py). SIGTERM or SIGINT to the parent is
passed to every worker, which drains its requests for the shutdown grace (api/server.py); the parent
exits once they have.

Metrics hook: before the app is imported, `prepare_multiprocess_metrics()` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory (unless the operator set one), as prometheus-client's
multiprocess mode requires; the workers inherit it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from optigraph.telemetry.metrics import mark_worker_dead

log = logging.getLogger("optigraph")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# A worker that dies this soon after it started, this many times in a row, stops the server: it would
# only die again (a database it cannot reach, a port it cannot use).
EARLY_EXIT_S = 10.0
EARLY_EXITS_TO_GIVE_UP = 5


def prepare_multiprocess_metrics() -> str:
    """Sets PROMETHEUS_MULTIPROC_DIR to a fresh temporary directory unless it is set; returns it.
    Call it before anything imports prometheus_client, and before the workers fork."""
    from optigraph.telemetry.metrics import prepare_multiprocess_dir

    # an operator's own directory is kept (emptied of an earlier server's files); else a fresh one
    return str(prepare_multiprocess_dir(os.environ.get(METRICS_DIR_VARIABLE) or None))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Forks `count` workers that each call `run_worker(sock)`, restarts one that dies, and stops
    them all on SIGTERM/SIGINT."""

    def __init__(self, sock: socket.socket, count: int, run_worker: Callable[[socket.socket], None]) -> None:
        self.sock = sock
        self.count = count
        self.run_worker = run_worker
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, when it started)
        self.stopping = False
        self.early_exits = 0
        self._previous: dict[int, object] = {}

    def run(self) -> int:
        """Runs until stopped; the exit status for the parent process."""
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            for number in range(self.count):
                self._spawn(number)
            log.info("serving with %d worker processes: %s", self.count, ", ".join(map(str, self.children)))
            while self.children:
                try:
                    pid, code = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                if pid not in self.children:
                    continue
                number, started = self.children.pop(pid)
                mark_worker_dead(pid)  # its live gauges (runs in flight) leave the sums
                if self.stopping:
                    continue
                self.early_exits = self.early_exits + 1 if time.monotonic() - started < EARLY_EXIT_S else 0
                if self.early_exits >= EARLY_EXITS_TO_GIVE_UP:
                    log.error(
                        "worker %d (pid %d) exited with %s: it keeps failing; stopping", number, pid, _describe(code)
                    )
                    status = 1
                    self._on_signal(signal.SIGTERM, None)
                    continue
                log.error("worker %d (pid %d) exited with %s; starting it again", number, pid, _describe(code))
                self._spawn(number)
            return status
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]

    def _spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Its own process group: a Ctrl-C in the terminal reaches the parent only, which passes
                # it on once (twice would skip the shutdown grace); and it goes if the parent dies.
                os.setpgid(0, 0)
                _stop_with_parent()
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)  # type: ignore[arg-type]  # the command's own; uvicorn adds its
                self.run_worker(self.sock)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                os._exit(code)
        self.children[pid] = (number, time.monotonic())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Each signal is passed on: a second one makes the workers interrupt their runs at once.
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _stop_with_parent() -> None:
    """Asks Linux to send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}"
