"""Optional client authentication, and which key (if any) is forwarded upstream.

One key check (`key_matches`, constant time) serves the API's bearer token and the web page's login
form. The page then holds a session cookie, never the key: `UISessions` signs an expiry time with
HMAC-SHA256 under a secret that is either configured or drawn at start."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from optigraph.errors import AuthenticationError


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(expected: str | None, given: str | None) -> bool:
    """Whether `given` is the server's key (constant time); any key matches when the server has none."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def upstream_key(request: Request) -> str | None:
    """Checks the client's key when the server requires one. Returns the key to forward upstream:
    the client's bearer token when the server holds no upstream key and does no client auth."""
    settings = request.app.state.settings
    token = bearer(request)
    if settings.api_key:
        if not key_matches(settings.api_key, token):
            raise AuthenticationError("invalid or missing API key: send 'Authorization: Bearer <key>'")
        return None  # the client's key is optigraph's, never an upstream's
    return None if settings.upstream_api_key else token


@dataclass
class UISessions:
    """Signed, expiring session tokens for the web page: `<expiry>.<hex HMAC>`.

    The MAC covers the expiry and a digest of the server's API key, so a token stops working when it
    expires, when the key changes, or (with a drawn secret) when the server restarts. `clock` is the
    time source (seconds since the epoch); tests replace it."""

    api_key: str
    ttl_s: int
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    clock: Callable[[], float] = time.time

    def _mac(self, expires: int) -> str:
        message = f"ui-session|{expires}|".encode() + hashlib.sha256(self.api_key.encode()).digest()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new token, valid for `ttl_s` seconds from now."""
        expires = int(self.clock()) + self.ttl_s
        return f"{expires}.{self._mac(expires)}"

    def valid(self, token: str | None) -> bool:
        """Whether `token` was issued here (with this key) and has not expired."""
        if not token:
            return False
        expires, _, mac = token.partition(".")
        if not expires.isdigit() or len(expires) > 12:
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(int(expires)).encode()):
            return False
        return self.clock() < int(expires)
