"""Writes docs/approaches.md from the registered approaches (`--check` exits 1 if it is stale)."""

import sys
from pathlib import Path

from optigraph.engine.catalog import catalog_markdown
from optigraph.engine.registry import builtin_registry

target = Path(__file__).resolve().parent.parent / "docs" / "approaches.md"
text = catalog_markdown(builtin_registry())
if "--check" in sys.argv:
    sys.exit(0 if target.exists() and target.read_text() == text else 1)
target.write_text(text)
