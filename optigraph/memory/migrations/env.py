"""Alembic environment for optigraph's tables.

The database URL comes, first match wins, from `upgrade_schema(db_url)`, `alembic -x db_url=...`,
the OPTIGRAPH_DB_URL variable, or the server's default (./optigraph.db).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, event, pool, text

from optigraph.memory.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    backend_name,
    ensure_sqlite_dir,
    switch_to_wal,
    sync_url,
)
from optigraph.memory.tables import Base

# Any constant works; it only has to be the same in every process that migrates this database.
MIGRATION_LOCK_ID = 0x6F7074696772  # "optigr"

config = context.config
if config.config_file_name is not None:  # run from the alembic command line
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _db_url() -> str:
    url = config.attributes.get("db_url") or context.get_x_argument(as_dictionary=True).get("db_url")
    url = url or os.environ.get("OPTIGRAPH_DB_URL")
    if not url:
        from optigraph.config import default_db_url

        url = default_db_url()
    return url


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_as_batch=True, **kwargs)


def run_migrations_offline() -> None:
    _configure(url=sync_url(_db_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # With the BEGIN IMMEDIATE below SQLite DDL is transactional too: one upgrade, one transaction.
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas starting together queue here; each then sees the version the last one left.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    db_url = _db_url()
    if backend_name(db_url) == "sqlite":
        ensure_sqlite_dir(db_url)
    engine = create_engine(sync_url(db_url), poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        # pysqlite would run DDL outside any transaction; BEGIN IMMEDIATE makes concurrent
        # upgrades of one file take turns instead of racing to create the same table.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None
            dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            switch_to_wal(dbapi_conn.execute)

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
