from __future__ import annotations

import multiprocessing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from optigraph.memory.db import sync_url
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.tables import Base


def _tables_and_version(db_url: str) -> tuple[set[str], list[str]]:
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            versions = [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
        return tables, versions
    finally:
        engine.dispose()


def test_upgrade_creates_tables_and_is_idempotent(db_url: str) -> None:
    upgrade_schema(db_url)
    tables, versions = _tables_and_version(db_url)
    assert {"runs", "upstream_calls", "memory_chunks", "spl_strategies", "alembic_version"} <= tables
    assert versions == ["0006"]
    columns = {c["name"] for c in inspect(create_engine(sync_url(db_url))).get_columns("runs")}
    assert {"spec", "lease_owner", "lease_expires_at"} <= columns

    upgrade_schema(db_url)
    assert _tables_and_version(db_url) == (tables, versions)


def test_migrations_match_models(db_url: str) -> None:
    upgrade_schema(db_url)
    engine = create_engine(sync_url(db_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("runs")}
            assert {"ix_runs_status", "ix_runs_created_at", "ix_runs_expression"} <= indexes
            memory = {ix["name"] for ix in inspect(conn).get_indexes("memory_chunks")}
            assert {"ix_memory_chunks_conversation", "ix_memory_chunks_run_id"} <= memory
    finally:
        engine.dispose()


def test_concurrent_upgrades_from_several_processes(db_url: str) -> None:
    # fork: the children start with alembic already imported, which keeps this test quick
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=upgrade_schema, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    tables, versions = _tables_and_version(db_url)
    assert {"runs", "upstream_calls"} <= tables
    assert versions == ["0006"]


def test_the_wal_switch_is_tried_again_while_another_connection_holds_the_new_file() -> None:
    import sqlite3

    from optigraph.memory.db import switch_to_wal

    calls: list[str] = []

    def locked_twice(sql: str) -> None:
        calls.append(sql)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")

    switch_to_wal(locked_twice)
    assert calls == ["PRAGMA journal_mode=WAL"] * 3

    def broken(sql: str) -> None:
        calls.append(sql)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):  # anything else is not waited out
        switch_to_wal(broken)
    assert len(calls) == 1
