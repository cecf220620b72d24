from __future__ import annotations

import pytest
from sqlalchemy import text

from optigraph.memory.db import async_url, open_database, sync_url


@pytest.mark.parametrize(
    ("url", "expected_async", "expected_sync"),
    [
        ("sqlite:///rel/x.db", "sqlite+aiosqlite:///rel/x.db", "sqlite:///rel/x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db", "sqlite:///x.db"),
        (
            "postgresql://u:p%40ss@h:5433/db?sslmode=require",
            "postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require",
            "postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require",
        ),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db", "postgresql+psycopg://h/db"),
        ("postgresql+psycopg2://h/db", "postgresql+psycopg://h/db", "postgresql+psycopg2://h/db"),
    ],
)
def test_urls_map_to_drivers(url: str, expected_async: str, expected_sync: str) -> None:
    assert async_url(url) == expected_async
    assert sync_url(url) == expected_sync


def test_unsupported_url_is_rejected() -> None:
    with pytest.raises(ValueError):
        async_url("mysql://h/db")


async def test_sqlite_engine_creates_folder_and_uses_wal(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    engine = open_database(f"sqlite:///{path}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000
    finally:
        await engine.dispose()
    assert path.exists()
