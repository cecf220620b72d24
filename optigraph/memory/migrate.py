"""Brings a database's schema to the latest revision; safe at every start and from several processes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(db_url: str) -> Config:
    """An Alembic config for the package's migrations, independent of the working directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Kept out of the ini options, whose %-interpolation would mangle percent-encoded passwords.
    config.attributes["db_url"] = db_url
    return config


def upgrade_schema(db_url: str) -> None:
    """Runs `alembic upgrade head` on db_url (blocking; from async code use asyncio.to_thread)."""
    command.upgrade(alembic_config(db_url), "head")
