#!/usr/bin/env bash
# Sets up (see setup.sh), lints, checks the formatting and runs the whole test suite. A skipped test fails
# the run unless it is marked needs_hardware (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
OPTIGRAPH_FAIL_ON_SKIP=1 exec .venv/bin/python -m pytest -q "$@"
