"""One helper for the small HTTP servers the tests stand up (Google's certificates, the metadata
server, dispatch targets).

``socketserver`` checks for shutdown every ``poll_interval``, 0.5 s by default, and each server a
test closed waited that out. Serving with a short poll makes ``close()`` return at once.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

_POLL_INTERVAL = 0.01


class BackgroundServer(ThreadingHTTPServer):
    """An HTTP server on a free port of 127.0.0.1, serving from a thread until ``close()``."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"test-server-{type(self).__name__}",
            daemon=True,
        )
        self._thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
