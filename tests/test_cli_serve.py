"""`optigraph serve` with bad settings, and `optigraph --version`: one line on stderr, no traceback,
exit status 2 (as argparse answers a bad flag), before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optigraph import __version__


def optigraph(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPTIGRAPH_")}
    return subprocess.run(
        [sys.executable, "-m", "optigraph", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **(env or {})},
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--approach", "bon&&"], ["--approach", "position 4"]),
        (["--approach", "no_such_approach"], ["--approach", "unknown approach 'no_such_approach'"]),
        (["--db-url", "mysql://x"], ["--db-url", "unsupported database URL"]),
        (["--port", "notaport"], ["--port", "'notaport'", "integer"]),
        (["--upstream-retries", "-1"], ["--upstream-retries", "greater than or equal to 0"]),
        (["--local-model", "no-such-dir/no-such-model.gguf"], ["--local-model", "not found"]),
        (["--mcp-config", "no-such-mcp.json"], ["--mcp-config", "no-such-mcp.json", "cannot read it"]),
        (["--proxy-config", "no-such-proxy.yaml"], ["--proxy-config", "no-such-proxy.yaml", "cannot read it"]),
    ],
)
def test_a_bad_serve_setting_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], says: list[str]) -> None:
    done = optigraph("serve", "--port", "1", "--db-url", f"sqlite:///{tmp_path / 'o.db'}", *argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optigraph serve: error: "), done.stderr
    assert all(s in lines[0] for s in says), lines[0]
    assert not (tmp_path / "o.db").exists()  # nothing was started


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    done = optigraph("serve", cwd=tmp_path, env={"OPTIGRAPH_PORT": "eighty"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "OPTIGRAPH_PORT" in done.stderr and "'eighty'" in done.stderr


def test_version(tmp_path: Path) -> None:
    done = optigraph("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"optigraph {__version__}"


def test_help_states_the_limits_and_timeouts(tmp_path: Path) -> None:
    done = optigraph("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for flag in (
        "--upstream-connect-timeout",
        "--upstream-read-timeout",
        "--upstream-total-timeout",
        "--upstream-retries",
        "--max-n",
        "--max-tokens",
        "--max-upstream-calls",
        "--max-upstream-tokens",
    ):
        assert flag in text
    assert "n <= 16" in text and "max_tokens <= 131072" in text and "256 upstream calls" in text
