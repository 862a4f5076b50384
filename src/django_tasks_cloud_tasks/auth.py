"""Who may run tasks through the execute view. It fails closed.

The view calls ``authenticate`` before it parses anything, with the ``Policy`` of the project's
Cloud Tasks backends. The answer is the set of backend aliases the request may run tasks for, or
``Refused`` with the HTTP status and the reason:

- A backend with ``OIDC_SERVICE_ACCOUNT_EMAIL`` accepts only a Bearer ID token signed by a trusted
  issuer, unexpired, whose ``aud`` is its ``OIDC_AUDIENCE`` and whose ``email`` is that service
  account, verified. Checking the audience alone is not enough: anyone can mint a Google ID token
  for any audience.
- A backend without it accepts unauthenticated requests only when ``DEBUG`` is on or it sets
  ``ALLOW_UNAUTHENTICATED`` (say, on a Cloud Run service that only IAM-authorised callers reach).

Once the body is parsed, ``Backends.permitted`` gives the backend the body names, if the request
may use it. The project's backends and their policy are worked out once per ``TASKS``
(``cloud_tasks_backends``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django.tasks import task_backends

from . import oidc
from .backend import CloudTasksBackend
from .config import CloudTasksConfig
from .exceptions import Refused

__all__ = ["Backends", "Policy", "authenticate", "cloud_tasks_backends"]

logger = logging.getLogger(__name__)
_closed_logged = False


@dataclass(frozen=True, slots=True)
class Policy:
    """Which requests each backend alias accepts, worked out once from the aliases' settings."""

    guarded: Mapping[str, CloudTasksConfig]  # Aliases that require an ID token.
    unguarded: frozenset[str]  # Those that don't: they run unauthenticated requests in DEBUG...
    allow_unauthenticated: frozenset[str]  # ...and these always (ALLOW_UNAUTHENTICATED).

    @classmethod
    def of(cls, configs: Mapping[str, CloudTasksConfig]) -> Policy:
        guarded = {a: c for a, c in configs.items() if c.oidc_service_account_email}
        unguarded = frozenset(configs.keys() - guarded.keys())
        allowed = frozenset(a for a in unguarded if configs[a].allow_unauthenticated)
        return cls(guarded=guarded, unguarded=unguarded, allow_unauthenticated=allowed)


@dataclass(frozen=True, slots=True)
class Backends:
    """The project's CloudTasksBackend aliases, and who may run tasks for them."""

    by_alias: Mapping[str, CloudTasksBackend]
    policy: Policy

    def permitted(self, alias: str, allowed: frozenset[str]) -> CloudTasksBackend:
        """The backend ``alias`` names, if the request was allowed to use it."""
        if alias not in allowed:
            raise Refused(
                403 if alias in self.by_alias else 400,
                f"backend {alias!r} is not a CloudTasksBackend this request may use",
            )
        return self.by_alias[alias]


# Kept per process until TASKS changes. Django builds a backend per thread, but the view reads only
# a backend's class and configuration, which are the same in every thread.
@cache
def cloud_tasks_backends() -> Backends:
    backends = {
        alias: backend
        for alias in task_backends.settings
        if isinstance(backend := task_backends[alias], CloudTasksBackend)
    }
    policy = Policy.of({alias: backend.config for alias, backend in backends.items()})
    return Backends(by_alias=backends, policy=policy)


@receiver(setting_changed)
def _forget_backends(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKS":
        cloud_tasks_backends.cache_clear()


def authenticate(request: HttpRequest, policy: Policy) -> frozenset[str]:
    """The backend aliases this request is allowed to run tasks for."""
    open_aliases = policy.unguarded if settings.DEBUG else policy.allow_unauthenticated
    if not policy.guarded:
        if open_aliases:
            return open_aliases
        _log_closed_once()
        raise Refused(
            403,
            "authentication is not configured: set OIDC_SERVICE_ACCOUNT_EMAIL, or "
            "ALLOW_UNAUTHENTICATED if only authorised callers can reach this service",
        )
    token = _bearer_token(request)
    if token is None:
        if open_aliases:
            return open_aliases
        raise Refused(401, "an 'Authorization: Bearer <ID token>' header is required")
    try:
        matched = _aliases_for_token(token, policy.guarded)
    except oidc.InvalidToken as exc:
        if open_aliases:
            return open_aliases
        raise Refused(401, f"the ID token was refused ({exc})") from None
    except oidc.CertificatesUnavailable as exc:
        raise Refused(503, f"the ID token cannot be verified now ({exc})") from None
    if not (matched or open_aliases):
        raise Refused(
            403, "the ID token is valid but not for this service's audience and service account"
        )
    return matched | open_aliases


def _bearer_token(request: HttpRequest) -> str | None:
    header: str | None = request.META.get("HTTP_AUTHORIZATION")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "the Authorization header must be 'Bearer <ID token>'")
    return token.strip()


def _aliases_for_token(token: str, guarded: Mapping[str, CloudTasksConfig]) -> frozenset[str]:
    # Its form first: finding an issuer's keys may need the network, a malformed token never does.
    parsed = oidc.parse(token)
    by_issuer: dict[oidc.Issuer, list[str]] = {}
    for alias, config in guarded.items():
        by_issuer.setdefault(_issuer(config), []).append(alias)
    error: oidc.InvalidToken | None = None
    for issuer, aliases in by_issuer.items():
        try:
            claims = oidc.verify(parsed, issuer)
        except oidc.InvalidToken as exc:
            error = exc
            continue
        return frozenset(a for a in aliases if _identity_matches(claims, guarded[a]))
    assert error is not None
    raise error


def _issuer(config: CloudTasksConfig) -> oidc.Issuer:
    # The emulator's keys are trusted only by a backend that itself sends its tasks there.
    if config.emulator_host:
        return oidc.emulator_issuer(config.emulator_host)
    return oidc.google_issuer()


def _identity_matches(claims: Mapping[str, Any], config: CloudTasksConfig) -> bool:
    return (
        claims.get("aud") == config.oidc_audience
        and claims.get("email") == config.oidc_service_account_email
        and claims.get("email_verified") is True
    )


def _log_closed_once() -> None:
    global _closed_logged
    if not _closed_logged:
        _closed_logged = True
        logger.error(
            "Cloud Tasks execute view refuses every task: no backend sets "
            "OIDC_SERVICE_ACCOUNT_EMAIL or ALLOW_UNAUTHENTICATED, and DEBUG is off. "
            "Run `manage.py check --deploy` for details."
        )
