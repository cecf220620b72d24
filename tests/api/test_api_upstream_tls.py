"""HTTPS upstreams and OptILLM's --ssl-verify / --no-ssl-verify / --ssl-cert-path: a self-signed
upstream is refused by default (502 naming the certificate), reached with verification off, and
reached with verification on against its certificate as the CA bundle."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn
from api_stack import start_stack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from upstream import ServerThread, UpstreamLog, make_app

HELLO = [{"role": "user", "content": "hi"}]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, UpstreamLog]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    log = UpstreamLog()
    server = ServerThread(make_app(log=log))
    server.server = uvicorn.Server(
        uvicorn.Config(
            make_app(log=log),
            host="127.0.0.1",
            port=server.port,
            log_level="warning",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
    )
    server.thread = threading.Thread(target=server.server.run, daemon=True)
    with server:
        yield f"https://127.0.0.1:{server.port}/v1", cert, log


@pytest.mark.parametrize(
    ("settings", "reached"),
    [
        ({}, False),
        ({"upstream_ssl_verify": False}, True),
        ({"upstream_ssl_cert_path": "CERT"}, True),
    ],
    ids=["verified-by-default", "no-ssl-verify", "ssl-cert-path"],
)
def test_tls_verification_of_the_upstream_follows_the_settings(
    tmp_path: Path, tls_upstream: tuple[str, Path, UpstreamLog], settings: dict, reached: bool
) -> None:
    url, cert, log = tls_upstream
    settings = {k: (cert if v == "CERT" else v) for k, v in settings.items()}
    with start_stack(tmp_path / "t.db", base_url=url, upstream_retries=0, **settings) as stack:
        client = stack.client()
        if reached:
            answer = client.chat.completions.create(model="fake-model", messages=HELLO)
            assert answer.choices[0].message.content == "echo: hi"
        else:
            before = len(log.bodies)
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="fake-model", messages=HELLO)
            assert info.value.status_code == 502
            assert "certificate" in info.value.body["message"].lower()
            assert len(log.bodies) == before  # nothing was sent over the unverified connection
