"""Two runners (two servers) on one database, SQLite file and PostgreSQL: a run is resumed by one at a
time. A second resume is refused (409) while the first is live, and succeeds once the first has
ended, or once a dead holder's lease has expired (a controllable clock moves time on)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripted import ScriptedBackend, last_user  # noqa: E402

from optigraph.backends.router import Backends  # noqa: E402
from optigraph.config import Settings  # noqa: E402
from optigraph.engine import resume  # noqa: E402
from optigraph.engine.compiler import Compiler  # noqa: E402
from optigraph.engine.registry import builtin_registry  # noqa: E402
from optigraph.engine.runner import Runner  # noqa: E402
from optigraph.errors import UpstreamError  # noqa: E402
from optigraph.memory.checkpoints import open_checkpointer  # noqa: E402
from optigraph.memory.db import open_database  # noqa: E402
from optigraph.memory.leases import take_lease  # noqa: E402
from optigraph.memory.migrate import upgrade_schema  # noqa: E402
from optigraph.memory.queries import get_run  # noqa: E402
from optigraph.memory.recorder import SqlRecorder  # noqa: E402

LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Upstream(ScriptedBackend):
    """Echoes; stage two fails while `down`, and waits for `release` while `gated`."""

    def __init__(self) -> None:
        super().__init__(self.reply)
        self.down = True
        self.gated = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def reply(self, body: dict[str, Any]) -> Any:
        if self.down and last_user(body) == "echo: q":
            return UpstreamError("stage two is down", upstream_status=400)
        return f"echo: {last_user(body)}"

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        if self.gated and last_user(body) == "echo: q":
            self.entered.set()
            await self.release.wait()
        return await super().complete(body, api_key=api_key)


@contextlib.asynccontextmanager
async def runner_on(
    db_url: str, db: Any, backend: Upstream, clock: Clock, lease_s: float = LEASE_S
) -> AsyncIterator[Runner]:
    """A runner as a server builds it (its own recorder and checkpointer) on the shared database."""
    settings = Settings(base_url="http://127.0.0.1:9/v1", db_url=db_url, run_lease_s=lease_s)
    registry = builtin_registry()
    backends = Backends(settings)
    backends.for_model = lambda model: (backend, model)  # type: ignore[method-assign]
    recorder = SqlRecorder(db)
    recorder.start()
    async with open_checkpointer(db_url) as saver:
        yield Runner(
            settings=settings,
            registry=registry,
            backends=backends,
            recorder=recorder,
            compiler=Compiler(registry, saver),
            clock=clock,
        )
    await recorder.aclose()


async def failed_run(runner: Runner) -> str:
    prep = await runner.prepare(
        {"model": "none&none-m", "messages": [{"role": "user", "content": "q"}]}, client_key=None
    )
    with pytest.raises(UpstreamError):
        await runner.complete(prep)
    await runner.recorder.flush()
    return prep.run_id


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Any]:
    await asyncio.to_thread(upgrade_schema, db_url)
    engine = open_database(db_url)
    yield engine
    await engine.dispose()


async def test_a_second_resume_is_refused_while_the_first_is_live(db_url: str, db: Any) -> None:
    backend, clock = Upstream(), Clock()
    async with runner_on(db_url, db, backend, clock) as a, runner_on(db_url, db, backend, clock) as b:
        run_id = await failed_run(a)
        backend.down, backend.gated = False, True
        first = asyncio.create_task(resume.resume_run(a, run_id, db=db))
        await backend.entered.wait()  # A is executing the run's second stage

        for other in (b, a):  # another server, or the same one again
            with pytest.raises(resume.RunNotResumable) as refused:
                await resume.resume_run(other, run_id, db=db)
            assert refused.value.status == 409 and refused.value.code == "run_in_progress"

        backend.release.set()
        result = await first
        assert result.response["choices"][0]["message"]["content"] == "echo: echo: q"
        row = await get_run(db, run_id)
        assert row["status"] == "completed" and row["lease_owner"] is None  # released at the end
        with pytest.raises(resume.RunNotResumable) as refused:
            await resume.resume_run(b, run_id, db=db)
        assert "completed" in refused.value.message


async def test_a_dead_holders_lease_expires(db_url: str, db: Any) -> None:
    backend, clock = Upstream(), Clock()
    async with runner_on(db_url, db, backend, clock) as b:
        run_id = await failed_run(b)
        backend.down = False
        # a server took the run and died: its lease is never renewed nor released
        assert await take_lease(db, run_id, owner="dead-server", now=clock(), ttl_s=LEASE_S)
        with pytest.raises(resume.RunNotResumable):
            await resume.resume_run(b, run_id, db=db)
        clock.advance(LEASE_S - 1)
        with pytest.raises(resume.RunNotResumable):
            await resume.resume_run(b, run_id, db=db)
        clock.advance(2)  # now past its expiry
        result = await resume.resume_run(b, run_id, db=db)
        assert result.response["choices"][0]["message"]["content"] == "echo: echo: q"
        assert (await get_run(db, run_id))["status"] == "completed"


async def test_a_failed_resume_releases_its_lease(db_url: str, db: Any) -> None:
    backend, clock = Upstream(), Clock()
    async with runner_on(db_url, db, backend, clock) as a, runner_on(db_url, db, backend, clock) as b:
        run_id = await failed_run(a)
        with pytest.raises(UpstreamError):  # still down: the resume fails too
            await resume.resume_run(a, run_id, db=db)
        backend.down = False
        result = await resume.resume_run(b, run_id, db=db)  # no wait for an expiry
        assert result.response["choices"][0]["message"]["content"] == "echo: echo: q"


async def test_a_live_resume_renews_its_lease(db_url: str, db: Any) -> None:
    backend, clock = Upstream(), Clock()
    async with (
        runner_on(db_url, db, backend, clock, lease_s=0.3) as a,
        runner_on(db_url, db, backend, clock, lease_s=0.3) as b,
    ):
        run_id = await failed_run(a)
        backend.down, backend.gated = False, True
        first = asyncio.create_task(resume.resume_run(a, run_id, db=db))
        await backend.entered.wait()
        taken = (await get_run(db, run_id))["lease_expires_at"]
        clock.advance(10)  # long past the lease as taken: only renewals keep it
        for _ in range(500):  # A renews every 0.1 s of real time, at the clock's time
            expires = (await get_run(db, run_id))["lease_expires_at"]
            if expires > clock():
                break
            await asyncio.sleep(0.01)
        assert expires > clock() > taken
        with pytest.raises(resume.RunNotResumable):
            await resume.resume_run(b, run_id, db=db)
        backend.release.set()
        await first
