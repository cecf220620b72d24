"""Which key (if any) is forwarded upstream, and the web page's sessions.

Who a caller is comes from api/access.py. The web page's login form takes a key (the server's or a
database key); the page then holds a session cookie, never the key: `UISessions` signs the caller's
tenant, scopes and key id with an expiry time, by HMAC-SHA256 under a secret that is either
configured or drawn at start."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from fastapi import Request

from optigraph.api.access import Principal, caller


async def upstream_key(request: Request) -> str | None:
    """Authenticates the caller (401 when it must and does not). Returns the key to forward
    upstream: the client's bearer token on an open server that holds no upstream key of its own."""
    return (await caller(request)).forward_key


@dataclass
class UISessions:
    """Signed, expiring session tokens for the web page: `<expiry>.<caller>.<hex HMAC>`.

    `<caller>` is the principal (tenant, scopes, name, key id) as base64url JSON. The MAC covers the
    expiry, the caller and a digest of the server's API key, so a token stops working when it
    expires, when the key changes, or (with a drawn secret) when the server restarts; a session made
    with a database key ends too when that key is revoked (checked by the page). `clock` is the time
    source (seconds since the epoch); tests replace it."""

    api_key: str | None
    ttl_s: int
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    clock: Callable[[], float] = time.time

    def _mac(self, expires: int, payload: str) -> str:
        message = f"ui-session|{expires}|{payload}|".encode() + hashlib.sha256((self.api_key or "").encode()).digest()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def issue(self, principal: Principal) -> str:
        """A new token for `principal`, valid for `ttl_s` seconds from now."""
        expires = int(self.clock()) + self.ttl_s
        data = {"t": principal.tenant, "s": sorted(principal.scopes), "n": principal.name, "k": principal.key_id}
        payload = base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")
        return f"{expires}.{payload}.{self._mac(expires, payload)}"

    def principal(self, token: str | None) -> Principal | None:
        """The caller of a token issued here (with this key) that has not expired; else None."""
        if not token or token.count(".") != 2:
            return None
        expires, payload, mac = token.split(".")
        if not expires.isdigit() or len(expires) > 12:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(int(expires), payload).encode()):
            return None
        if self.clock() >= int(expires):
            return None
        data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return Principal(tenant=data["t"], scopes=frozenset(data["s"]), name=data["n"], key_id=data["k"])

    def valid(self, token: str | None) -> bool:
        return self.principal(token) is not None
