"""Verifying the OIDC ID tokens Cloud Tasks attaches to each dispatch.

google-auth checks the signature, ``iat``/``exp`` and the audience; its certificate lookups are not
cached, so this module keeps each issuer's certificates per process for their advertised lifetime
and verifies in-process with ``google.auth.jwt.decode``. Which issuers are trusted is decided by the
caller: Google's, or the local emulator's only while the backend itself talks to that emulator.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import google.auth.transport.requests

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# The emulator answers this gRPC method with {"issuer", "certs_url"} so that a backend knowing only
# CLOUD_TASKS_EMULATOR_HOST can find the keys of the emulator it talks to.
EMULATOR_OIDC_CONFIG_METHOD = "/django_tasks_cloud_tasks.emulator.Emulator/GetOidcConfig"
CLOCK_SKEW_SECONDS = 10
# Certificates are re-fetched early for an unknown key id (Google rotates keys), but not more often
# than this, so tokens with made-up key ids cannot make every request fetch.
MIN_REFETCH_SECONDS = 30
DEFAULT_CERTS_LIFETIME = 300
EMULATOR_CONFIG_LIFETIME = 60
_MAX_AGE = re.compile(r"max-age=(\d+)")


class InvalidToken(Exception):
    """The token is not a valid ID token from a trusted issuer; the message says why."""


class CertificatesUnavailable(Exception):
    """The issuer's public keys could not be fetched, so no token can be verified now."""


@dataclass(frozen=True, slots=True)
class Issuer:
    names: frozenset[str]
    certs_url: str


def google_issuer() -> Issuer:
    return Issuer(GOOGLE_ISSUERS, GOOGLE_CERTS_URL)


def emulator_issuer(emulator_host: str) -> Issuer:
    """The issuer of the emulator at ``emulator_host``, asked over its gRPC port."""
    # The emulator may be restarted with new ports, so its answer is kept only briefly.
    return _emulator_issuer(emulator_host, int(time.monotonic() // EMULATOR_CONFIG_LIFETIME))


@cache
def _emulator_issuer(emulator_host: str, _period: int) -> Issuer:
    import grpc

    try:
        with grpc.insecure_channel(emulator_host) as channel:
            answer = channel.unary_unary(EMULATOR_OIDC_CONFIG_METHOD)(b"", timeout=5)
        document = json.loads(answer)
        return Issuer(frozenset({document["issuer"]}), document["certs_url"])
    except (grpc.RpcError, ValueError, KeyError, TypeError) as exc:
        raise CertificatesUnavailable(
            f"the Cloud Tasks emulator at {emulator_host} did not say where its keys are ({exc})"
        ) from exc


@dataclass(frozen=True, slots=True)
class _Certificates:
    keys: Mapping[str, str]
    fetched_at: float
    expires_at: float


class CertificateCache:
    """Public keys per certs URL, fetched once and kept for their ``Cache-Control`` lifetime."""

    def __init__(self) -> None:
        self._entries: dict[str, _Certificates] = {}
        self._lock = threading.Lock()

    def keys(self, url: str, key_id: str | None) -> Mapping[str, str]:
        entry = self._entries.get(url)
        if entry is None or self._stale(entry, key_id):
            with self._lock:
                entry = self._entries.get(url)
                if entry is None or self._stale(entry, key_id):
                    entry = self._entries[url] = self._fetch(url)
        return entry.keys

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @staticmethod
    def _stale(entry: _Certificates, key_id: str | None) -> bool:
        now = time.monotonic()
        if now >= entry.expires_at:
            return True
        return key_id not in entry.keys and now - entry.fetched_at >= MIN_REFETCH_SECONDS

    def _fetch(self, url: str) -> _Certificates:
        import google.auth.exceptions

        try:
            response = _transport()(url=url, method="GET", timeout=5)
        except google.auth.exceptions.TransportError as exc:
            raise CertificatesUnavailable(f"fetching {url} failed ({exc})") from exc
        if response.status != 200:
            raise CertificatesUnavailable(f"{url} answered {response.status}")
        try:
            keys = json.loads(response.data)
        except ValueError:
            keys = None
        if not isinstance(keys, dict):
            raise CertificatesUnavailable(f"{url} did not answer a JSON object of keys")
        now = time.monotonic()
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        lifetime = int(match.group(1)) if match else DEFAULT_CERTS_LIFETIME
        return _Certificates(keys=keys, fetched_at=now, expires_at=now + lifetime)


certificates = CertificateCache()


@cache
def _transport() -> google.auth.transport.requests.Request:
    import google.auth.transport.requests

    return google.auth.transport.requests.Request()


def verify(token: str, issuer: Issuer) -> Mapping[str, Any]:
    """Check the signature, ``iat``/``exp`` and issuer of ``token``; return its claims.

    The audience and identity are the caller's to check: they depend on which backend is asked.
    """
    # Imported on first use: google-auth's JWT and HTTP modules take ~0.1 s to import, which a
    # service that verifies no tokens should not pay on its first request.
    import google.auth.jwt

    try:
        keys = certificates.keys(issuer.certs_url, _key_id(token))
        claims: Mapping[str, Any] = google.auth.jwt.decode(
            token, certs=keys, verify=True, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
        )
    except CertificatesUnavailable:
        raise
    except Exception as exc:
        # google-auth raises ValueError, its own errors, and for hostile input, whatever its
        # decoders meet. Any of them means one thing here: the token is not acceptable.
        raise InvalidToken(_reason(exc, token)) from None
    if claims.get("iss") not in issuer.names:
        raise InvalidToken(f"issuer {str(claims.get('iss'))[:100]!r} is not trusted")
    return claims


def _key_id(token: str) -> str | None:
    """The ``kid`` of the token's header, read without decoding the rest of the token.

    Only the certificate cache uses it, to notice a rotated key; ``jwt.decode`` reads the header
    again for itself. (google-auth's ``decode_header`` would decode the whole token, a quarter of
    the cost of verifying it.)
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return None
    key_id = header.get("kid") if isinstance(header, dict) else None
    return key_id if isinstance(key_id, str) else None


def _reason(exc: Exception, token: str) -> str:
    # Some google-auth messages quote the token: keep the reason, never the token.
    text = str(exc).split("\n")[0]
    for part in {token, *token.split(".")}:
        if len(part) >= 8:
            text = text.replace(part, "<redacted>")
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
