"""The CI rule in tests/conftest.py: a skip fails the run unless the test is marked needs_hardware."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INNER = """
import pytest

def test_runs():
    assert sum([1, 1]) == 2

def test_skips():
    pytest.skip("a package is missing")

@pytest.mark.needs_hardware("a GPU")
def test_skips_for_lack_of_a_gpu():
    pytest.skip("no GPU here")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    raise ValueError
"""
SKIPPED_MODULE = 'import pytest\npytest.importorskip("no_such_module_anywhere")\n\ndef test_never(): pass\n'


def run_inner(
    tmp_path: Path, files: dict[str, str], *, fail_on_skip: bool, variable: str = "OPTIGRAPH_FAIL_ON_SKIP"
) -> subprocess.CompletedProcess[str]:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "OPTIGRAPH_FAIL_ON_SKIP")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the inner tests need no plugin
    if fail_on_skip:
        env[variable] = "1" if variable == "OPTIGRAPH_FAIL_ON_SKIP" else "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_outside_ci_a_skip_is_a_skip(tmp_path: Path) -> None:
    done = run_inner(tmp_path, {"test_inner.py": INNER}, fail_on_skip=False)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout


@pytest.mark.parametrize("variable", ["OPTIGRAPH_FAIL_ON_SKIP", "CI"])
def test_in_ci_an_unmarked_skip_fails(tmp_path: Path, variable: str) -> None:
    done = run_inner(tmp_path, {"test_inner.py": INNER}, fail_on_skip=True, variable=variable)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in done.stdout
    assert "FAILED test_inner.py::test_skips" in done.stdout and "a skip in CI is a failure" in done.stdout
    assert "SKIPPED [1] test_inner.py" in done.stdout  # the needs_hardware one


def test_in_ci_a_module_skipped_at_collection_fails(tmp_path: Path) -> None:
    done = run_inner(tmp_path, {"test_inner.py": INNER, "test_missing.py": SKIPPED_MODULE}, fail_on_skip=True)
    assert done.returncode != 0, done.stdout
    assert "test_missing.py" in done.stdout and "a skip in CI is a failure" in done.stdout
