"""Who is calling: every request is resolved to a Principal (tenant, scopes, limits), or refused.

A bearer token is, in this order:
- the server's own `--api-key` (constant-time compare): an admin of the tenant "default";
- a key made with `optigraph keys create` (`og_...`, memory/keys.py): its tenant, scopes and limits;
- a JWT of the configured OAuth issuer (api/oauth.py): the tenant from `--oauth-tenant-claim`
  (default `sub`), the scopes from `scope` (or `scp`).
The server requires one of these when it has an `--api-key`, an `--oauth-issuer`, or any active key
in its database. Otherwise every caller is the tenant "default" with every scope, and its bearer
token (if any) is forwarded upstream as before.

Key lookups and tenants' limits are cached for `access_cache_s` seconds (bounded caches).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from optigraph.api.oauth import InvalidToken, Jwks, TokenVerifier, looks_like_jwt
from optigraph.api.scopes import ALL_SCOPES, parse_scopes
from optigraph.config import Settings
from optigraph.core.lru import LRUCache
from optigraph.errors import AuthenticationError
from optigraph.memory.keys import StoredKey, active_key_count, digest, find_key, key_active, looks_like_key
from optigraph.memory.limits import LimitValues, tenant_overrides

DEFAULT_TENANT = "default"
CACHE_SIZE = 4096


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the anonymous one of an open server)."""

    tenant: str
    scopes: frozenset[str]
    name: str  # the key's name, `api-key`, the token's subject, or `anonymous`
    key_id: str | None = None  # a database key's id
    key_limits: dict[str, Any] | None = None  # the key's own limits


@dataclass(frozen=True)
class Caller:
    """A request's principal, and the key forwarded upstream on its behalf (if any)."""

    principal: Principal
    forward_key: str | None


ANONYMOUS = Principal(tenant=DEFAULT_TENANT, scopes=frozenset(ALL_SCOPES), name="anonymous")
ANONYMOUS_CALLER = Caller(ANONYMOUS, None)
SERVER_KEY = Principal(tenant=DEFAULT_TENANT, scopes=frozenset(ALL_SCOPES), name="api-key")


def bearer(request: Request) -> str | None:
    # The first `authorization` header, as `request.headers.get` finds it (ASGI servers send the names in
    # lower case), without the KeyError that look-up raises and catches when there is none.
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    else:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class Access:
    """The server's authentication and per-tenant limit defaults; owned by the app, built at start.

    `clock` (monotonic seconds) times the caches; tests replace it."""

    settings: Settings
    db: AsyncEngine | None = None  # set when the database is open (app lifespan)
    verifier: TokenVerifier | None = None
    clock: Callable[[], float] = time.monotonic
    _keys: LRUCache[str, tuple[float, StoredKey | None]] = field(default_factory=lambda: LRUCache(CACHE_SIZE))
    _key_ids: LRUCache[str, tuple[float, bool]] = field(default_factory=lambda: LRUCache(CACHE_SIZE))
    _limits: LRUCache[str, tuple[float, dict[str, Any] | None]] = field(default_factory=lambda: LRUCache(CACHE_SIZE))
    _any_keys: tuple[float, bool] | None = None
    _defaults: LimitValues = field(default_factory=LimitValues)  # the server's limits, built once per change

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        verifier = None
        if settings.oauth_issuer:
            jwks = Jwks(
                issuer=settings.oauth_issuer,
                jwks_url=settings.oauth_jwks_url,
                min_refresh_s=settings.oauth_jwks_min_refresh_s,
            )
            verifier = TokenVerifier(jwks, settings.oauth_audience, settings.oauth_clock_skew_s)
        return cls(settings=settings, verifier=verifier)

    def _fresh(self, at: float) -> bool:
        return self.clock() - at < self.settings.access_cache_s

    async def keys_exist(self) -> bool:
        """Whether the database holds an active key (then every request needs a key)."""
        if self.db is None:
            return False
        if self._any_keys is None or not self._fresh(self._any_keys[0]):
            self._any_keys = (self.clock(), await active_key_count(self.db) > 0)
        return self._any_keys[1]

    async def required(self) -> bool:
        """Whether callers must authenticate."""
        s = self.settings
        return bool(s.api_key or s.oauth_issuer) or await self.keys_exist()

    async def stored_key(self, token: str) -> StoredKey | None:
        if self.db is None:
            return None
        cached = self._keys.get(digest(token))  # the cache holds no key, only digests
        if cached is not None and self._fresh(cached[0]):
            return cached[1]
        found = await find_key(self.db, token)
        self._keys[digest(token)] = (self.clock(), found)
        return found

    async def key_id_active(self, key_id: str) -> bool:
        """Whether the key with this id is still active (a web session made with it lasts no longer)."""
        if self.db is None:
            return False
        cached = self._key_ids.get(key_id)
        if cached is None or not self._fresh(cached[0]):
            cached = (self.clock(), await key_active(self.db, key_id))
            self._key_ids[key_id] = cached
        return cached[1]

    async def authenticate(self, token: str | None) -> Caller:
        """The caller a bearer token makes (None: no token), or an AuthenticationError (401)."""
        s = self.settings
        if token is not None:
            if s.api_key and hmac.compare_digest(token.encode(), s.api_key.encode()):
                return Caller(SERVER_KEY, None)
            if looks_like_key(token):
                key = await self.stored_key(token)
                if key is not None:
                    return Caller(_key_principal(key), None)
            if self.verifier is not None and looks_like_jwt(token):
                claims = await self.verifier.claims(token)
                return Caller(self._token_principal(claims), None)
        if await self.required():
            if token is None:
                raise AuthenticationError("this server needs a key: send 'Authorization: Bearer <key or token>'")
            raise AuthenticationError("invalid API key or token")
        if token is None or s.upstream_api_key:
            return ANONYMOUS_CALLER
        return Caller(ANONYMOUS, token)

    def _token_principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self.settings.oauth_tenant_claim)
        if not isinstance(tenant, str | int) or not str(tenant).strip():
            raise InvalidToken(f"the token has no {self.settings.oauth_tenant_claim!r} claim to name its tenant")
        scopes = parse_scopes(claims.get("scope")) | parse_scopes(claims.get("scp"))
        return Principal(tenant=str(tenant), scopes=scopes, name=str(claims.get("sub") or tenant))

    async def limits(self, principal: Principal) -> LimitValues:
        """The caller's limits: its key's own, else its tenant's, else the server's defaults."""
        s = self.settings
        values = self._defaults
        if (values.rpm, values.concurrent_runs, values.tokens_per_day) != (
            s.tenant_rpm,
            s.tenant_concurrent_runs,
            s.tenant_tokens_per_day,
        ):
            values = self._defaults = LimitValues(
                rpm=s.tenant_rpm, concurrent_runs=s.tenant_concurrent_runs, tokens_per_day=s.tenant_tokens_per_day
            )
        if self.db is not None:
            cached = self._limits.get(principal.tenant)
            if cached is None or not self._fresh(cached[0]):
                cached = (self.clock(), await tenant_overrides(self.db, principal.tenant))
                self._limits[principal.tenant] = cached
            values = values.overridden(cached[1])
        return values.overridden(principal.key_limits)


def _key_principal(key: StoredKey) -> Principal:
    return Principal(
        tenant=key.tenant,
        scopes=frozenset(key.scopes),
        name=key.name,
        key_id=key.id,
        key_limits={"rpm": key.rpm, "concurrent_runs": key.concurrent_runs, "tokens_per_day": key.tokens_per_day},
    )


async def caller(request: Request) -> Caller:
    """The request's caller (a FastAPI dependency; resolved once per request)."""
    # request.state's own dict, read directly: an unset attribute of `request.state` costs two raised
    # and caught exceptions, on every request (a passthrough request's CPU).
    state = request.scope.setdefault("state", {})
    found = state.get("caller")
    if found is None:
        found = state["caller"] = await request.app.state.access.authenticate(bearer(request))
    return found


async def principal(request: Request) -> Principal:
    return (await caller(request)).principal
