"""docs/approaches.md is generated from the registered approaches and must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_approach_docs_match_the_code() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "approach_docs.py"), "--check"], cwd=ROOT)
    assert done.returncode == 0, "docs/approaches.md is stale: run python scripts/approach_docs.py"


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = "\n".join(lines[:6])
    assert "./scripts/setup.sh && .venv/bin/optigraph serve" in block
    assert "./scripts/test.sh" in block
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
