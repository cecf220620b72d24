"""Fixtures for the API tests (helpers in api_stack.py): the shared server and its upstream."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_stack import Stack, start_stack  # noqa: E402


@pytest.fixture(scope="session")
def _shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = tmp_path_factory.mktemp("api") / "optigraph.db"
    with start_stack(db, upstream={"reasoning_tokens": 3}, default_model="fake-model") as s:
        yield s


@pytest.fixture
def stack(_shared_stack: Stack) -> Iterator[Stack]:
    """The shared server (n-capable upstream, 3 reasoning tokens per call), with a clean upstream log."""
    _shared_stack.reset()
    yield _shared_stack
    _shared_stack.reset()
