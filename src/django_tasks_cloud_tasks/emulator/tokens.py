"""OIDC ID tokens like those Cloud Tasks attaches, and the HTTP server publishing their keys.

Each emulator signs with its own fresh RSA key. Its certificates document has the form Google
serves at ``/oauth2/v1/certs``: ``{kid: PEM}`` with a self-signed X.509 certificate of each key,
which ``google.oauth2.id_token.verify_token(..., certs_url=...)`` accepts; the JWKS form would make
google-auth switch to PyJWT, which ignores clock skew.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

if TYPE_CHECKING:
    from .console import Console, Page

MAX_FORM_BYTES = 64 * 1024

TOKEN_LIFETIME = 3600
# Google's certificates are valid for about two weeks; verifiers do not look at the dates.
CERTIFICATE_LIFETIME = timedelta(days=14)
_NUMERIC_ID_MODULUS = 10**21  # service-account unique ids are 21-digit numbers


class TokenSigner:
    """Mints RS256 ID tokens issued by ``issuer`` for any service account."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_key = key.public_key()
        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha256(der).hexdigest()[:16]
        self.certificate_pem = certificate_pem(key, common_name=self.kid)
        self._public_numbers = public_key.public_numbers()
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(private_pem, key_id=self.kid)

    def mint(self, *, email: str, audience: str) -> str:
        now = int(time.time())
        digest = hashlib.sha256(email.encode()).digest()
        account_id = str(int.from_bytes(digest) % _NUMERIC_ID_MODULUS)
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "azp": account_id,
            "sub": account_id,
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + TOKEN_LIFETIME,
        }
        token: bytes = jwt.encode(self._signer, payload)
        return token.decode()

    def documents(self) -> dict[str, bytes]:
        """The JSON documents the token server publishes, by path."""
        jwk = {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _base64url_uint(self._public_numbers.n),
            "e": _base64url_uint(self._public_numbers.e),
        }
        discovery = {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        }
        return {
            "/certs": json.dumps({self.kid: self.certificate_pem}).encode(),
            "/jwks": json.dumps({"keys": [jwk]}).encode(),
            "/.well-known/openid-configuration": json.dumps(discovery).encode(),
        }


class TokenServer:
    """Serves the signer's documents, and the web page if given one, over HTTP; binds on
    construction, serves after ``start``."""

    def __init__(self, host: str, port: int) -> None:
        self._server = _DocumentServer((host, port), _DocumentHandler)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # Short, so that stop() returns promptly.
            kwargs={"poll_interval": 0.05},
            name="cloud-tasks-emulator-tokens",
            daemon=True,
        )

    def start(self, documents: dict[str, bytes], console: Console | None = None) -> None:
        self._server.documents = documents
        self._server.console = console
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class _DocumentServer(ThreadingHTTPServer):
    daemon_threads = True
    documents: dict[str, bytes]
    console: Console | None


class _DocumentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate sends; with Nagle on, keep-alive clients would wait
    # for a delayed ACK on every request.
    disable_nagle_algorithm = True
    server: _DocumentServer

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        body = self.server.documents.get(path)
        if body is not None:
            self._send(200, body, cache=True)
            return
        page = self.server.console.get(path) if self.server.console else None
        if page is None:
            self._send(404, b'{"error": "not found"}', cache=False)
        else:
            self._send_page(page)

    def do_POST(self) -> None:
        console = self.server.console
        length = int(self.headers.get("Content-Length") or 0)
        if console is None or not 0 <= length <= MAX_FORM_BYTES:
            self.close_connection = True
            self._send(404 if console is None else 413, b'{"error": "refused"}', cache=False)
            return
        body = self.rfile.read(length)
        self._send_page(
            console.post(
                self.path.partition("?")[0],
                body,
                origin=self.headers.get("Origin"),
                host=self.headers.get("Host"),
            )
        )

    def _send_page(self, page: Page) -> None:
        self.send_response(page.status)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Content-Length", str(len(page.body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in page.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(page.body)

    def _send(self, status: int, body: bytes, *, cache: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cache:
            self.send_header("Cache-Control", "public, max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: certificate fetches are routine."""


def certificate_pem(key: rsa.RSAPrivateKey, *, common_name: str) -> str:
    """A self-signed X.509 certificate of ``key``, the form in which Google publishes its keys."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _base64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
