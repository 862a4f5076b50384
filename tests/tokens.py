"""A locally generated signing key standing in for Google's, and a certificate server publishing it.

Google's certificate endpoint cannot be reached here; this server serves the same document
(``{key id: X.509 certificate PEM}`` with a ``Cache-Control`` lifetime) and counts how often it is
fetched.
"""

from __future__ import annotations

import base64
import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import google.auth.crypt
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from django_tasks_cloud_tasks.emulator.tokens import certificate_pem
from tests.servers import BackgroundServer

SERVICE_ACCOUNT = "invoker@test-project.iam.gserviceaccount.com"


class SigningKey:
    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.certificate_pem = certificate_pem(private, common_name=key_id)

    def sign(self, claims: dict[str, Any], key_id: str | None = None) -> str:
        signer = google.auth.crypt.RSASigner.from_string(
            self.private_pem, key_id=key_id or self.key_id
        )
        return google.auth.jwt.encode(signer, claims).decode()

    def sign_with_header(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A token with exactly this header (no ``kid`` unless it says so), signed RS256."""
        signer = google.auth.crypt.RSASigner.from_string(self.private_pem)
        signed = f"{segment(header)}.{segment(claims)}"
        return f"{signed}.{_base64url(signer.sign(signed))}"


def segment(value: Any) -> str:
    """A JWT segment: ``value`` as JSON, base64url-encoded without padding."""
    return _base64url(json.dumps(value).encode())


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CertificateServer(BackgroundServer):
    """Publishes public keys like https://www.googleapis.com/oauth2/v1/certs does."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        # Published as they are, with the keys' certificates, to see how verifiers cope with them.
        self.extra_entries: dict[str, Any] = {}
        self.fetches = 0
        super().__init__(_CertificateHandler)

    @property
    def url(self) -> str:
        return f"{self.base_url}/oauth2/v1/certs"


class _CertificateHandler(BaseHTTPRequestHandler):
    server: CertificateServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.fetches += 1
        document = {key.key_id: key.certificate_pem for key in self.server.keys}
        body = json.dumps({**document, **self.server.extra_entries}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def google_claims(audience: str, **overrides: Any) -> dict[str, Any]:
    """Claims shaped like those of a Cloud Tasks OIDC token, valid now."""
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "sub": "109876543210987654321",
        "azp": "109876543210987654321",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}
