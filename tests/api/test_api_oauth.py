"""OAuth 2.1 resource-server authentication: bearer JWTs checked against a real JWKS server on
loopback, with keys generated here. Each bad token is refused with a 401 (`invalid_token`) and
`WWW-Authenticate` naming the RFC 9728 metadata; a token without the needed scope gets a 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from api_stack import Stack, start_stack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from upstream import ServerThread

AUDIENCE = "optigraph-test"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Issuer:
    """A JWKS server on loopback: its OpenID metadata, its keys (changeable), and a fetch count."""

    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)  # the kids the JWKS lists
    fetches: int = 0
    url: str = ""

    def add_key(self, kid: str, *, kind: str = "rsa", publish: bool = True) -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[self.alg(kid)].to_jwk(self.keys[kid].public_key()))
            out.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": out}

    def alg(self, kid: str) -> str:
        return "RS256" if isinstance(self.keys[kid], rsa.RSAPrivateKey) else "ES256"

    def token(
        self, kid: str = "k1", *, alg: str | None = None, exp_in: int = 600, nbf_in: int | None = None, **overrides: Any
    ) -> str:
        """A token signed with key `kid`, expiring `exp_in` seconds from now (valid from `nbf_in`)."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": "team-a", "iat": now, "exp": now + exp_in, "scope": "chat"}
        if nbf_in is not None:
            claims["nbf"] = now + nbf_in
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm=alg or self.alg(kid), headers={"kid": kid})

    def app(self) -> Starlette:
        async def metadata(_: Request) -> JSONResponse:
            return JSONResponse({"issuer": self.url, "jwks_uri": self.url + "/jwks"})

        async def jwks(_: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(self.jwks())

        return Starlette(routes=[Route("/.well-known/openid-configuration", metadata), Route("/jwks", jwks)])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A token built by hand: `alg: none` (no signature), or HS256 under `secret`."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if secret is None:
        return head + "."
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    found = Issuer()
    found.add_key("k1")
    with ServerThread(found.app()) as server:
        found.url = server.url
        yield found


@pytest.fixture(scope="module")
def server(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory.mktemp("oauth") / "o.db",
        default_model="fake-model",
        oauth_issuer=issuer.url,
        oauth_audience=AUDIENCE,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def jwks_clock(server: Stack) -> Iterator[list[float]]:
    """The server's JWKS refresh clock, moved on by the tests (never back): `clock[0]` is now."""
    jwks = server.server.server.config.app.state.access.verifier.jwks
    now = [time.monotonic()]
    jwks.clock = lambda: now[0]
    yield now
    jwks.clock = time.monotonic


def post(server: Stack, token: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with server.http() as http:
        return http.post("/v1/chat/completions", json=body or HELLO, headers=headers)


def check_invalid_token(response: httpx.Response, server: Stack, what: str) -> None:
    assert response.status_code == 401, (what, response.text)
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_token", what
    assert what in error["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource"' in challenge


def test_a_valid_token_is_served_as_its_tenant(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    r = post(server, issuer.token(sub="team-a"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert server.run(r.headers["x-optigraph-run-id"])["tenant"] == "team-a"
    assert server.log.headers[-1].get("authorization") is None  # the token is optigraph's, never forwarded


def test_a_token_within_the_clock_skew_is_accepted(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    assert post(server, issuer.token(exp_in=-20, nbf_in=20)).status_code == 200


def test_an_es256_token_is_accepted(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    issuer.add_key("ec1", kind="ec")
    jwks_clock[0] += 3600  # the new key is found by a refresh, as a rotation is
    assert post(server, issuer.token("ec1")).status_code == 200


@pytest.mark.parametrize(
    ("claims", "what"),
    [
        ({"exp_in": -3600}, "expired"),
        ({"nbf_in": 3600}, "not valid yet"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "http://127.0.0.1:1/other-issuer"}, "issuer"),
        ({"exp": None}, "exp"),
    ],
    ids=["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "no-expiry"],
)
def test_a_token_with_bad_claims_is_refused(
    server: Stack, issuer: Issuer, jwks_clock: list[float], claims: dict[str, Any], what: str
) -> None:
    sent = len(server.log.bodies)
    check_invalid_token(post(server, issuer.token(**claims)), server, what)
    assert len(server.log.bodies) == sent  # nothing went upstream


def test_a_token_signed_by_another_key_is_refused(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    issuer.add_key("forger", publish=False)
    good = issuer.token("k1")
    claims = jwt.decode(good, options={"verify_signature": False})
    # the claims of a real token, signed by a key the issuer never published, naming the issuer's key
    forged = jwt.encode(claims, issuer.keys["forger"], algorithm="RS256", headers={"kid": "k1"})
    check_invalid_token(post(server, forged), server, "signature")
    head = good.split(".")[0]
    tampered = json.dumps({**claims, "sub": "team-b"}).encode()  # a real signature over other claims
    check_invalid_token(post(server, ".".join([head, b64(tampered), good.split(".")[2]])), server, "signature")


def test_alg_none_is_refused(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    for alg in ("none", "None", "NONE"):
        check_invalid_token(
            post(server, unsigned({"alg": alg, "kid": "k1", "typ": "JWT"}, claims)), server, "algorithm"
        )


def test_hs256_signed_with_the_public_key_is_refused(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    public = issuer.keys["k1"].public_key()
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(issuer.jwks()["keys"][0]).encode(),
    ):
        token = unsigned({"alg": "HS256", "kid": "k1", "typ": "JWT"}, claims, secret)
        check_invalid_token(post(server, token), server, "algorithm")


def test_an_unknown_key_id_triggers_one_bounded_refresh(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    bound = server.settings.oauth_jwks_min_refresh_s
    jwks_clock[0] += bound  # the last fetch is longer ago than the bound
    assert post(server, issuer.token()).status_code == 200
    issuer.add_key("late", publish=False)
    before = issuer.fetches
    check_invalid_token(post(server, issuer.token("late")), server, "signing key")
    assert issuer.fetches == before + 1  # the unknown key id made the server look again, once
    for _ in range(5):
        check_invalid_token(post(server, issuer.token("late", sub="flood")), server, "signing key")
    assert issuer.fetches == before + 1  # no more fetches within the bound, however many such tokens
    issuer.published.append("late")  # the issuer rotates: the key is published now
    jwks_clock[0] += bound / 2
    check_invalid_token(post(server, issuer.token("late")), server, "signing key")  # still within the bound
    assert issuer.fetches == before + 1
    jwks_clock[0] += bound / 2
    assert post(server, issuer.token("late")).status_code == 200  # one more fetch finds it
    assert post(server, issuer.token("late")).status_code == 200  # and it is cached
    assert issuer.fetches == before + 2


def test_no_token_gets_a_challenge_naming_the_metadata(server: Stack, issuer: Issuer) -> None:
    r = post(server, None)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{server.url}/.well-known/oauth-protected-resource"'
    )
    with server.http() as http:
        meta = http.get("/.well-known/oauth-protected-resource")
    assert meta.status_code == 200
    body = meta.json()
    assert body["resource"] == server.url and body["authorization_servers"] == [issuer.url]
    assert {"chat", "runs:read", "plugins:code"} <= set(body["scopes_supported"])


def test_a_missing_scope_is_403(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    r = post(server, issuer.token(scope="runs:read"))
    assert r.status_code == 403
    error = r.json()["error"]
    assert (
        error["type"] == "permission_error" and error["code"] == "insufficient_scope" and "'chat'" in error["message"]
    )
    assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="chat"'
    code = {"model": "executecode&none-fake-model", "messages": HELLO["messages"]}
    r = post(server, issuer.token(scope="chat"), code)
    assert r.status_code == 403 and "'plugins:code'" in r.json()["error"]["message"]
    assert post(server, issuer.token(scope="chat plugins:code"), code).status_code == 200
    with server.http() as http:
        runs = http.get("/v1/runs", headers={"authorization": f"Bearer {issuer.token(scope='chat')}"})
        assert runs.status_code == 403 and "'runs:read'" in runs.json()["error"]["message"]
        runs = http.get("/v1/runs", headers={"authorization": f"Bearer {issuer.token(scope='runs:read')}"})
        assert runs.status_code == 200


def test_a_token_without_the_tenant_claim_is_refused(server: Stack, issuer: Issuer, jwks_clock: list[float]) -> None:
    check_invalid_token(post(server, issuer.token(sub=None)), server, "'sub'")
