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


def _settings_table() -> dict[str, list[str]]:
    """README's `optigraph serve` table: flag -> its cells."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `--") and len(cells) == 3:
            rows[cells[0].strip("`")] = cells
    return rows


def test_readme_documents_every_serve_flag_with_its_variable_and_default() -> None:
    from optigraph.cli import SERVE_FLAGS
    from optigraph.config import Settings

    table = _settings_table()
    for flag, dest, _ in SERVE_FLAGS:
        assert flag in table, f"README's settings table lacks {flag}"
        assert table[flag][1] == f"`OPTIGRAPH_{dest.upper()}`", table[flag]
        default = Settings.model_fields[dest].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            text = str(default) if isinstance(default, int) else f"{default:g}"
            assert table[flag][2].startswith(f"`{text}`"), (flag, default, table[flag][2])


def test_readme_and_local_docs_state_the_real_limits() -> None:
    from optigraph.config import Settings
    from optigraph.core.cost import evaluate
    from optigraph.engine.registry import builtin_registry

    readme = (ROOT / "README.md").read_text()
    bon = builtin_registry().get("bon")
    calls = evaluate(bon.calls, bon.params().model_dump())
    assert f'"approach": "bon", "upstream_calls": {calls}}}' in readme
    max_n = Settings.model_fields["max_n"].default
    assert f"`n > 1` (at most {max_n}" in readme
    local = " ".join((ROOT / "docs" / "local.md").read_text().split())
    assert f"`n` (up to {max_n}, the server's `--max-n`)" in local
