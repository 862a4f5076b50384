"""Facts about the running instance, read from the Google Cloud metadata server.

google-auth resolves ``GCE_METADATA_HOST`` once, when it is first imported, and by default retries
a lookup for several seconds. Configuration wants neither: the host is read at call time (so a late
change to the environment is honoured) and a single short attempt is made, so that a machine outside
Google Cloud fails in well under a second instead of hanging on a host that will never answer.
"""

from __future__ import annotations

import os

from .transport import http_request

DEFAULT_HOST = "metadata.google.internal"
# A real metadata server answers in about a millisecond.
TIMEOUT_SECONDS = 0.4


class MetadataUnavailable(Exception):
    """The metadata server could not be reached or did not know the answer."""


def metadata_host() -> str:
    return (
        os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT") or DEFAULT_HOST
    )


def read(path: str) -> str:
    """Return the metadata value at ``path``, e.g. ``project/project-id``."""
    # Imported here: most configurations never ask, and these cost ~0.1 s at Django start-up.
    import google.auth.exceptions
    from google.auth.compute_engine import _metadata

    root = f"http://{metadata_host()}/computeMetadata/v1/"
    try:
        value = _metadata.get(
            http_request(), path, root=root, retry_count=1, timeout=TIMEOUT_SECONDS
        )
    except google.auth.exceptions.GoogleAuthError as exc:
        # google-auth's message repeats the URL and the whole urllib3 chain; the cause is kept.
        raise MetadataUnavailable(f"{root}{path} could not be read") from exc
    return str(value).strip()
