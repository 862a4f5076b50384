"""Verifying the OIDC ID tokens Cloud Tasks attaches to each dispatch.

The signature is checked by google-auth's ``RSAVerifier`` (on ``cryptography``), built once per
published key and kept for the keys' advertised lifetime; the token is decoded once and its
algorithm, key id, ``iat``/``exp`` and issuer are checked here. (``google.auth.jwt.decode`` parses
the issuer's X.509 certificate again for every token, and this module needs the token's header
before it, so it would decode the token twice: together about as much as the RSA check itself.)
Which issuers are trusted is decided by the caller: Google's, or the local emulator's only while
the backend itself talks to that emulator.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeGuard

from .transport import http_request

if TYPE_CHECKING:
    import google.auth.crypt

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


# Bounded: each period adds an entry, for as long as the process runs.
@lru_cache(maxsize=8)
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
class _Keys:
    verifiers: Mapping[str, google.auth.crypt.Verifier]
    fetched_at: float
    expires_at: float


class CertificateCache:
    """Each certs URL's keys as verifiers, fetched once and kept for their advertised lifetime."""

    def __init__(self) -> None:
        self._entries: dict[str, _Keys] = {}
        self._lock = threading.Lock()

    def verifier(self, url: str, key_id: str) -> google.auth.crypt.Verifier | None:
        """The verifier of key ``key_id`` published at ``url``; ``None`` if there is no such key."""
        entry = self._entries.get(url)
        if entry is None or self._stale(entry, key_id):
            with self._lock:
                entry = self._entries.get(url)
                if entry is None or self._stale(entry, key_id):
                    entry = self._entries[url] = self._fetch(url)
        return entry.verifiers.get(key_id)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @staticmethod
    def _stale(entry: _Keys, key_id: str) -> bool:
        now = time.monotonic()
        if now >= entry.expires_at:
            return True
        return key_id not in entry.verifiers and now - entry.fetched_at >= MIN_REFETCH_SECONDS

    def _fetch(self, url: str) -> _Keys:
        # Imported on first use: google-auth's crypt and HTTP modules take about 0.1 s to import,
        # which a service that verifies no tokens should not pay on its first request.
        import google.auth.crypt
        import google.auth.exceptions

        try:
            response = http_request()(url=url, method="GET", timeout=5)
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
        verifiers = {}
        for key_id, pem in keys.items():
            try:
                verifiers[key_id] = google.auth.crypt.RSAVerifier.from_string(pem)
            except (TypeError, ValueError) as exc:
                raise CertificatesUnavailable(
                    f"{url} published key {key_id!r}, which is not an RSA certificate ({exc})"
                ) from exc
        now = time.monotonic()
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        lifetime = int(match.group(1)) if match else DEFAULT_CERTS_LIFETIME
        return _Keys(verifiers=verifiers, fetched_at=now, expires_at=now + lifetime)


certificates = CertificateCache()


@dataclass(frozen=True, slots=True)
class Token:
    """A token whose form was checked (``parse``), its signature not yet."""

    claims: Mapping[str, Any]
    key_id: str
    signed: bytes  # The header and claims segments, as signed.
    signature: bytes


def parse(token: str) -> Token:
    """Decode ``token`` and check its form and lifetime: all that needs no key.

    A malformed token is refused here, whatever the state of the key cache, so that only a
    well-formed one can make a request wait for, or fail on, fetching keys.
    """
    header, claims, signed, signature = _decode(token)
    if header.get("alg") != "RS256":
        # Google signs ID tokens with RS256 only; anything else ("none", HS256 keyed with the
        # public key, ...) is a forgery.
        raise InvalidToken(f"algorithm {_show(header.get('alg'))} is not RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise InvalidToken("the token names no key id")
    _check_lifetime(claims)
    return Token(claims=claims, key_id=key_id, signed=signed, signature=signature)


def verify(token: str | Token, issuer: Issuer) -> Mapping[str, Any]:
    """Check the signature, ``iat``/``exp`` and issuer of ``token``; return its claims.

    The audience and identity are the caller's to check: they depend on which backend is asked.
    """
    if isinstance(token, str):
        token = parse(token)
    verifier = certificates.verifier(issuer.certs_url, token.key_id)
    if verifier is None:
        raise InvalidToken(f"key id {_show(token.key_id)} is not one of the issuer's keys")
    if not verifier.verify(token.signed, token.signature):
        raise InvalidToken("the signature does not match the issuer's key")
    claimed_issuer = token.claims.get("iss")
    if not isinstance(claimed_issuer, str) or claimed_issuer not in issuer.names:
        raise InvalidToken(f"issuer {_show(claimed_issuer)} is not trusted")
    return token.claims


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """The header, claims, signed part and signature of a JWS compact token; nothing verified."""
    try:
        encoded = token.encode("ascii")
        encoded_header, encoded_claims, encoded_signature = encoded.split(b".")
        header = json.loads(_base64url(encoded_header))
        claims = json.loads(_base64url(encoded_claims))
        signature = _base64url(encoded_signature)
    except (ValueError, RecursionError):
        # ValueError covers non-ASCII text, a wrong number of segments, bad base64 and bad JSON;
        # RecursionError, JSON nested deeper than the parser goes.
        raise InvalidToken("the token is not a JWT (three base64url segments of JSON)") from None
    if not (isinstance(header, dict) and isinstance(claims, dict)):
        raise InvalidToken("the token's header and claims must be JSON objects")
    return header, claims, encoded[: len(encoded_header) + 1 + len(encoded_claims)], signature


def _base64url(segment: bytes) -> bytes:
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


def _check_lifetime(claims: Mapping[str, Any]) -> None:
    issued_at, expires_at = claims.get("iat"), claims.get("exp")
    if not (_is_time(issued_at) and _is_time(expires_at)):
        raise InvalidToken("the token must carry numeric 'iat' and 'exp' claims")
    now = time.time()
    if now < issued_at - CLOCK_SKEW_SECONDS:
        raise InvalidToken(f"the token is not valid yet (issued at {issued_at}, now {now:.0f})")
    if now > expires_at + CLOCK_SKEW_SECONDS:
        raise InvalidToken(f"the token has expired (at {expires_at}, now {now:.0f})")


def _is_time(value: object) -> TypeGuard[float]:
    # JSON numbers only: not booleans (an int subclass), nor NaN and Infinity, which Python's json
    # accepts though JSON has neither (and NaN compares false with everything: never too early,
    # never expired).
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _show(value: object) -> str:
    # Reasons are logged and answered: quote what the token said, briefly.
    return repr(value)[:100]
