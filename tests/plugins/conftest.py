"""Helpers for plugin tests: a Runner in-process over a backend the test controls."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
