"""OAuth 2.1 resource-server authentication: bearer JWTs checked against the issuer's keys.

A token is accepted when its header names an asymmetric algorithm (RS*, PS*, ES*, EdDSA: never
`none`, never an HMAC, so a token signed with the issuer's *public* key as an HMAC secret is refused
before any key is looked at), its key id is in the issuer's JWKS and that key is of the algorithm's
family, its signature verifies, and its `iss`, `aud`, `exp` (required) and `nbf` (when present) hold,
with `clock_skew_s` of leeway. PyJWT does the cryptography.

The JWKS comes from `jwks_url`, else from the issuer's metadata (`/.well-known/openid-configuration`,
then RFC 8414's `/.well-known/oauth-authorization-server`). It is cached; a token with a key id not in
the cache triggers a fetch (key rotation), but at most one per `min_refresh_s`, so a stream of tokens
with made-up key ids cannot make the server hammer the issuer.

`/.well-known/oauth-protected-resource` serves the RFC 9728 metadata that tells a client where to get
a token; a 401 names it in `WWW-Authenticate`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from fastapi import APIRouter, Request

from optigraph.api.scopes import ALL_SCOPES
from optigraph.errors import AuthenticationError, NotFound

# The algorithms accepted, by the JWK key type that may verify them.
KEY_TYPES = {
    **{alg: "RSA" for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{alg: "EC" for alg in ("ES256", "ES384", "ES512")},
    "EdDSA": "OKP",
}
METADATA_PATH = "/.well-known/oauth-protected-resource"
FETCH_TIMEOUT_S = 10.0
JWKS_MAX_AGE_S = 3600.0  # fetched again after this long even without an unknown key id (removed keys)

router = APIRouter(include_in_schema=False)


class InvalidToken(AuthenticationError):
    """A bearer token that is not a valid token of the configured issuer (401, `invalid_token`)."""

    code = "invalid_token"


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


@dataclass
class Jwks:
    """The issuer's signing keys by key id, fetched lazily and at a bounded rate.

    `clock` (monotonic seconds) is the time source of the rate bound; tests replace it."""

    issuer: str
    jwks_url: str | None = None
    min_refresh_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    fetches: int = 0  # how many times the JWKS was fetched (reported in /health-like checks and tests)
    _keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    _fetched_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK with this key id (the only key, when the token names none and there is one)."""
        found = self._find(kid)
        stale = self._fetched_at is None or self.clock() - self._fetched_at >= JWKS_MAX_AGE_S
        if found is not None and not stale:
            return found
        async with self._lock:
            found = self._find(kid)
            if found is not None and not stale:
                return found
            if self._fetched_at is None or self.clock() - self._fetched_at >= self.min_refresh_s:
                await self._refresh()
            return self._find(kid)

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = self.clock()  # a failed fetch counts too: the bound holds when the issuer is down
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as http:
                url = self.jwks_url or await self._discover(http)
                self.jwks_url = url
                response = await http.get(url)
                response.raise_for_status()
                keys = response.json().get("keys")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise InvalidToken(f"the issuer's signing keys could not be fetched ({type(exc).__name__})") from None
        if isinstance(keys, list):
            self._keys = {str(k.get("kid", i)): k for i, k in enumerate(keys) if isinstance(k, dict)}

    async def _discover(self, http: httpx.AsyncClient) -> str:
        """The `jwks_uri` of the issuer's OpenID or RFC 8414 metadata."""
        base = self.issuer.rstrip("/")
        scheme, _, rest = base.partition("://")
        host, slash, path = rest.partition("/")
        candidates = [
            f"{base}/.well-known/openid-configuration",
            f"{scheme}://{host}/.well-known/oauth-authorization-server{slash}{path}",
        ]
        for url in candidates:
            response = await http.get(url)
            if response.status_code == 200:
                uri = response.json().get("jwks_uri")
                if isinstance(uri, str) and uri:
                    return uri
        raise httpx.HTTPError(f"no jwks_uri in the metadata of {self.issuer}")


@dataclass
class TokenVerifier:
    """Checks bearer JWTs of one issuer for one audience; returns their claims."""

    jwks: Jwks
    audience: str | None
    clock_skew_s: float = 60.0

    async def claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in KEY_TYPES:
            raise InvalidToken(f"tokens signed with {alg!r} are not accepted (only asymmetric algorithms)")
        kid = header.get("kid")
        jwk = await self.jwks.key(kid if isinstance(kid, str) else None)
        if jwk is None:
            raise InvalidToken("the token's signing key is not among the issuer's keys")
        if jwk.get("kty") != KEY_TYPES[alg] or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
            raise InvalidToken("the token's algorithm does not match its signing key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.jwks.issuer,
                leeway=self.clock_skew_s,
                options={"require": ["exp", "iss"] + (["aud"] if self.audience else [])},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token is not from the configured issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None


def resource_metadata_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + METADATA_PATH


@router.get(METADATA_PATH)
async def protected_resource(request: Request) -> dict[str, Any]:
    """RFC 9728 protected-resource metadata: which authorization server issues tokens for this API."""
    settings = request.app.state.settings
    if not settings.oauth_issuer:
        raise NotFound("this server accepts no OAuth tokens (no --oauth-issuer)")
    return {
        "resource": str(request.base_url).rstrip("/"),
        "authorization_servers": [settings.oauth_issuer],
        "scopes_supported": list(ALL_SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "optigraph",
    }
