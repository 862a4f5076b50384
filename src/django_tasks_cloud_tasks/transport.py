"""The process's HTTP transport for the metadata server and the OIDC certificate fetches.

One ``requests`` session (inside google-auth's ``Request``) keeps connections alive between the
rare lookups both make. A forked child (gunicorn ``--preload``) must not share its parent's
sockets, so the fork hook drops it and the child builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import google.auth.transport.requests

_request: google.auth.transport.requests.Request | None = None
_lock = threading.Lock()


def http_request() -> google.auth.transport.requests.Request:
    """google-auth's HTTP callable, built once per process."""
    global _request
    request = _request
    if request is None:
        # Imported here: google-auth's HTTP modules take about 0.1 s to import.
        import google.auth.transport.requests

        with _lock:
            if _request is None:
                _request = google.auth.transport.requests.Request()
            request = _request
    return request


def _forget() -> None:
    global _request
    _request = None


os.register_at_fork(after_in_child=_forget)
