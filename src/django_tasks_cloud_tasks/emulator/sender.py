"""Sending one attempt over HTTP, with the standard library's ``http.client``.

Each dispatch worker owns a ``Sender``: its keep-alive connections, one per scheme, host and port.
``requests``, which the emulator used before, spent about 350 µs of CPU per attempt on this
machine against about 60 to 90 µs for ``http.client`` on the same keep-alive connection (see
docs/performance.md), and the emulator needs none of what it adds: no cookies, proxies,
authentication from the environment, redirects or content decoding, all of which it had to turn
off. What it kept is kept here: the URL is re-quoted as ``requests`` did, an idle connection the
server has closed is replaced before use, and a connection closed under a request is retried once
on a new one, as ``urllib3`` does.
"""

from __future__ import annotations

import http.client
import select
import ssl
from functools import cache, lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from requests.utils import requote_uri

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The connection was closed under the request before any answer: the server dropped an idle
# keep-alive connection just as it was reused.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_CHUNK = 64 * 1024


class Answer(NamedTuple):
    status: int
    retry_after: str | None
    location: str | None


class Sender:
    """A worker's connections. Not thread-safe: one per worker thread."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Answer:
        """Send the request and read the whole answer. Raises TimeoutError past ``timeout``
        (connecting, or waiting for any part of the answer) and OSError or
        ``http.client.HTTPException`` when the exchange fails."""
        scheme, host, port, target = _split(url)
        key = (scheme, host, port)
        connection = self._connections.pop(key, None)
        if connection is not None:
            if _dropped(connection):
                connection.close()
            else:
                try:
                    return self._exchange(key, connection, method, target, headers, body, timeout)
                except _STALE:
                    pass
        connection = _connect(scheme, host, port, timeout)
        return self._exchange(key, connection, method, target, headers, body, timeout)

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _exchange(
        self,
        key: tuple[str, str, int],
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
    ) -> Answer:
        try:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            # Only the task's headers (and Host, Content-Length): no Accept-Encoding.
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            if body or method in _BODY_METHODS:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            # Read to the end, so that the connection can carry the next attempt.
            while response.read(_CHUNK):
                pass
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._connections[key] = connection
        return Answer(response.status, response.getheader("Retry-After"),
                      response.getheader("Location"))  # fmt: skip


@lru_cache(maxsize=4096)
def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of a task's URL, checked by CreateTask already."""
    parts = urlsplit(requote_uri(url))
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return scheme, parts.hostname or "", port, target


def _connect(scheme: str, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls())
    return http.client.HTTPConnection(host, port, timeout=timeout)


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed an idle connection: it is readable (EOF) with nothing asked."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
