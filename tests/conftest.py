"""Fixtures shared by the whole test suite, and the rule that a skip in CI is a failure.

With `CI` or `OPTIGRAPH_FAIL_ON_SKIP=1` in the environment (scripts/test.sh sets the latter), a test that
skips fails instead, unless it is marked `@pytest.mark.needs_hardware("what")`: hardware this machine class
lacks (a GPU) is the one acceptable reason not to run. Everything else a test needs is installed by
`scripts/setup.sh --test`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _fail_on_skip() -> bool:
    return os.environ.get("OPTIGRAPH_FAIL_ON_SKIP", "") not in ("", "0") or bool(os.environ.get("CI"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_hardware(what): needs hardware some machines lack (may skip in CI)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and _fail_on_skip()
        and item.get_closest_marker("needs_hardware") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, and a skip in CI is a failure: {reason}\n(install what the test needs with "
            "scripts/setup.sh --test, or mark it needs_hardware if this machine class lacks it)"
        )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and _fail_on_skip():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{report.nodeid} skipped at collection, and a skip in CI is a failure: {reason}"


def _postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL install (/usr/lib/postgresql/<version>/bin), if any."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found += [Path(p).parent for p in (shutil.which("initdb"),) if p]
    found = [d for d in found if (d / "pg_ctl").exists()]
    return max(found, key=lambda d: [int(x) for x in d.parent.name.split(".") if x.isdigit()] or [0], default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphan_postgres(bin_dir: Path, as_user: list[str]) -> None:
    """Stops servers whose test run was killed before its teardown (each dir records its owner pid)."""
    for owner in glob.glob(os.path.join(tempfile.gettempdir(), "optigraph-pg-*", "owner.pid")):
        root = os.path.dirname(owner)
        try:
            pid = int(Path(owner).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_alive(pid):
            data = os.path.join(root, "data")
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session: postgresql://postgres@127.0.0.1:PORT/postgres."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install -y postgresql)")
    # PostgreSQL refuses to run as root: run it as the postgres system user, which owns the temp dir.
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="optigraph-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    _reap_orphan_postgres(bin_dir, as_user)
    Path(root, "owner.pid").write_text(str(os.getpid()))
    data, log, port = os.path.join(root, "data"), os.path.join(root, "server.log"), _free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bin_dir / tool), *args], check=True, capture_output=True, timeout=60)

    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        pg("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
