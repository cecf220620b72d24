"""Optional client authentication, and which key (if any) is forwarded upstream."""

from __future__ import annotations

import hmac

from fastapi import Request

from optigraph.errors import AuthenticationError


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def upstream_key(request: Request) -> str | None:
    """Checks the client's key when the server requires one. Returns the key to forward upstream:
    the client's bearer token when the server holds no upstream key and does no client auth."""
    settings = request.app.state.settings
    token = bearer(request)
    if settings.api_key:
        if token is None or not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise AuthenticationError("invalid or missing API key: send 'Authorization: Bearer <key>'")
        return None  # the client's key is optigraph's, never an upstream's
    return None if settings.upstream_api_key else token
