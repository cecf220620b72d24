"""`optigraph keys ...`, `optigraph tenants ...` and `optigraph runs prune`: administering access,
limits and retention directly on the database (the command line wires its arguments here)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.api.scopes import ALL_SCOPES, DEFAULT_KEY_SCOPES, unknown_scopes
from optigraph.errors import InvalidRequest
from optigraph.memory.db import backend_name, open_database, sqlite_path
from optigraph.memory.keys import active_key_count, create_key, list_keys, revoke_key, set_key_limits
from optigraph.memory.limits import clear_tenant_limits, list_tenant_limits, set_tenant_limits
from optigraph.memory.migrate import upgrade_schema
from optigraph.memory.records import utcnow
from optigraph.memory.retention import orphan_calls, prune_runs

T = TypeVar("T")


def on_database(db_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Runs `work` on the database (its schema brought up to date first)."""
    upgrade_schema(db_url)

    async def run() -> T:
        db = open_database(db_url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def checked_scopes(scopes: list[str] | None) -> list[str]:
    chosen = list(scopes) if scopes else list(DEFAULT_KEY_SCOPES)
    bad = unknown_scopes(chosen)
    if bad:
        raise InvalidRequest(f"unknown scope {', '.join(bad)}: the scopes are {', '.join(ALL_SCOPES)}")
    return chosen


def keys_create(
    db_url: str, *, name: str, tenant: str, scopes: list[str] | None, limits: dict[str, int | None]
) -> tuple[dict[str, Any], str]:
    """Creates a key; its fields and the key itself (to show once)."""
    chosen = checked_scopes(scopes)
    stored, key = on_database(db_url, lambda db: create_key(db, name=name, tenant=tenant, scopes=chosen, **limits))
    return stored.public(), key


def keys_list(db_url: str, *, include_revoked: bool) -> list[dict[str, Any]]:
    return [k.public() for k in on_database(db_url, lambda db: list_keys(db, include_revoked=include_revoked))]


def keys_revoke(db_url: str, name_or_id: str) -> None:
    on_database(db_url, lambda db: revoke_key(db, name_or_id))


def keys_set_limits(db_url: str, name_or_id: str, limits: dict[str, int | None]) -> None:
    on_database(db_url, lambda db: set_key_limits(db, name_or_id, **limits))


def tenants_set_limits(db_url: str, tenant: str, limits: dict[str, int | None]) -> dict[str, Any]:
    return on_database(db_url, lambda db: set_tenant_limits(db, tenant, **limits))


def tenants_clear_limits(db_url: str, tenant: str) -> bool:
    return on_database(db_url, lambda db: clear_tenant_limits(db, tenant))


def tenants_list(db_url: str) -> list[dict[str, Any]]:
    return on_database(db_url, list_tenant_limits)


def runs_prune(db_url: str, *, older_than_days: float) -> int:
    """Deletes the runs created more than `older_than_days` ago; how many."""
    cutoff = utcnow() - timedelta(days=older_than_days)

    async def prune(db: AsyncEngine) -> int:
        deleted = await prune_runs(db, before=cutoff)
        await orphan_calls(db, before=cutoff)
        return deleted

    return on_database(db_url, prune)


def active_keys(db_url: str) -> int:
    """How many active keys the database holds (0 when it has no key table yet, or cannot be read)."""
    if backend_name(db_url) == "sqlite" and not Path(sqlite_path(db_url)).expanduser().exists():
        return 0  # no database yet (and none is created just to look)

    async def count() -> int:
        db = open_database(db_url)
        try:
            return await active_key_count(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(count())
    except Exception:  # no database yet, or no keys table: no keys
        return 0


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server to this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Any) -> str | None:
    """Why the server must not start as configured (bound beyond loopback with no client
    authentication at all), with how to fix it; None when it may."""
    if is_loopback(settings.host) or settings.allow_unauthenticated:
        return None
    if settings.api_key or settings.oauth_issuer or active_keys(settings.db_url):
        return None
    return (
        f"refusing to serve on {settings.host} without client authentication: anyone who can reach it could "
        "use the upstream keys and read every run. Set a key (--api-key KEY or OPTIGRAPH_API_KEY), create keys "
        "with `optigraph keys create --name NAME --tenant TENANT`, or accept OAuth tokens (--oauth-issuer URL "
        "--oauth-audience AUD); or pass --allow-unauthenticated if the network in front of it does the checking"
    )


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
