"""Static API keys in the database: created, looked up, listed and revoked.

A key is `og_<id>_<secret>`: the id names the row, the secret is 32 random bytes. Only the SHA-256
digest of the whole key is stored (a key has 256 bits of entropy, so a plain digest cannot be
reversed by guessing, and no slow hash is needed); a lookup finds the row by digest and compares the
digests again in constant time. The key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.errors import InvalidRequest, NotFound

from .records import utcnow
from .tables import API_KEYS

PREFIX = "og_"


@dataclass(frozen=True)
class StoredKey:
    """A key's row, without its secret."""

    id: str
    name: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None
    rpm: int | None = None
    concurrent_runs: int | None = None
    tokens_per_day: int | None = None

    def public(self) -> dict[str, Any]:
        """The key's fields for listings (never the secret: it is not stored)."""
        return {
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "rpm": self.rpm,
            "concurrent_runs": self.concurrent_runs,
            "tokens_per_day": self.tokens_per_day,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    """Whether a bearer token has the form of a key made here (as opposed to a JWT or another key)."""
    return token.startswith(PREFIX) and token.count("_") >= 2


def _stored(row: Any) -> StoredKey:
    return StoredKey(
        id=row["id"],
        name=row["name"],
        tenant=row["tenant"],
        scopes=tuple(row["scopes"] or ()),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        rpm=row["rpm"],
        concurrent_runs=row["concurrent_runs"],
        tokens_per_day=row["tokens_per_day"],
    )


async def create_key(
    db: AsyncEngine,
    *,
    name: str,
    tenant: str,
    scopes: list[str],
    rpm: int | None = None,
    concurrent_runs: int | None = None,
    tokens_per_day: int | None = None,
) -> tuple[StoredKey, str]:
    """A new key: its row and the key itself (shown once; only its digest is stored)."""
    if not name.strip() or not tenant.strip():
        raise InvalidRequest("a key needs a name and a tenant")
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = {
        "id": key_id,
        "name": name.strip(),
        "tenant": tenant.strip(),
        "scopes": sorted(set(scopes)),
        "key_hash": digest(key),
        "created_at": utcnow(),
        "revoked_at": None,
        "rpm": rpm,
        "concurrent_runs": concurrent_runs,
        "tokens_per_day": tokens_per_day,
    }
    try:
        async with db.begin() as conn:
            await conn.execute(API_KEYS.insert(), row)
    except IntegrityError:
        raise InvalidRequest(f"a key named {name!r} exists already", param="name") from None
    return _stored(row), key


async def find_key(db: AsyncEngine, key: str) -> StoredKey | None:
    """The active (not revoked) key `key` is, or None."""
    wanted = digest(key)
    async with db.connect() as conn:
        row = (
            (await conn.execute(select(API_KEYS).where(API_KEYS.c.key_hash == wanted, API_KEYS.c.revoked_at.is_(None))))
            .mappings()
            .one_or_none()
        )
    if row is None or not hmac.compare_digest(row["key_hash"], wanted):
        return None
    return _stored(row)


async def active_key_count(db: AsyncEngine) -> int:
    """How many keys are not revoked (the server requires a key when there is any)."""
    async with db.connect() as conn:
        rows = await conn.execute(select(API_KEYS.c.id).where(API_KEYS.c.revoked_at.is_(None)).limit(1))
        return len(rows.all())


async def key_active(db: AsyncEngine, key_id: str) -> bool:
    """Whether the key with this id exists and is not revoked."""
    async with db.connect() as conn:
        query = select(API_KEYS.c.id).where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
        return (await conn.execute(query)).first() is not None


async def list_keys(db: AsyncEngine, *, include_revoked: bool = False) -> list[StoredKey]:
    query = select(API_KEYS).order_by(API_KEYS.c.created_at, API_KEYS.c.id)
    if not include_revoked:
        query = query.where(API_KEYS.c.revoked_at.is_(None))
    async with db.connect() as conn:
        return [_stored(row) for row in (await conn.execute(query)).mappings()]


def _named(name_or_id: str) -> Any:
    return (API_KEYS.c.name == name_or_id) | (API_KEYS.c.id == name_or_id)


async def revoke_key(db: AsyncEngine, name_or_id: str) -> None:
    """Revokes the key with this name or id; NotFound when there is no such active key."""
    async with db.begin() as conn:
        result = await conn.execute(
            update(API_KEYS).where(_named(name_or_id), API_KEYS.c.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
    if result.rowcount == 0:
        raise NotFound(f"no active key named {name_or_id!r}")


async def set_key_limits(db: AsyncEngine, name_or_id: str, **limits: int | None) -> None:
    """Sets the key's own limits (rpm, concurrent_runs, tokens_per_day; 0: none); None leaves one as it is."""
    values = {k: v for k, v in limits.items() if v is not None}
    if not values:
        return
    async with db.begin() as conn:
        result = await conn.execute(update(API_KEYS).where(_named(name_or_id)).values(**values))
    if result.rowcount == 0:
        raise NotFound(f"no key named {name_or_id!r}")
