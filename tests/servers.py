"""One helper for the small HTTP servers the tests stand up (Google's certificates, the metadata
server, dispatch targets), the scripted target of the emulator's tests, and their gRPC client.

``socketserver`` checks for shutdown every ``poll_interval``, 0.5 s by default, and each server a
test closed waited that out. Serving with a short poll makes ``close()`` return at once.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

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


# A tiny HTTP target that records what it receives and answers as scripted.


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Target:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._hits: list[Hit] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._server = _TargetServer(self)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def script(self, path: str, *replies: Reply | int) -> None:
        """Answer the next requests to ``path`` with these replies, then with 200."""
        self._scripts[path] = [r if isinstance(r, Reply) else Reply(r) for r in replies]

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._changed:
            return [h for h in self._hits if path is None or h.path == path]

    def wait_for_hits(self, count: int, path: str | None = None, timeout: float = 5) -> list[Hit]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.hits(path)) >= count, timeout)
        return self.hits(path)

    def reset(self) -> None:
        with self._changed:
            self._hits.clear()
            self._scripts.clear()

    def close(self) -> None:
        self._server.close()

    def record(self, hit: Hit) -> Reply:
        with self._changed:
            self._hits.append(hit)
            self._changed.notify_all()
            script = self._scripts.get(hit.path)
            return script.pop(0) if script else Reply()


class _TargetServer(BackgroundServer):
    def __init__(self, target: Target) -> None:
        self.target = target
        super().__init__(_TargetHandler)


class _TargetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _TargetServer

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        hit = Hit(self.command, self.path, dict(self.headers.items()), body, time.time())
        reply = self.server.target.record(hit)
        time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def log_message(self, format: str, *args: Any) -> None:
        pass


def tasks_client(address: str) -> tasks_v2.CloudTasksClient:
    """The unmodified Cloud Tasks client on a plain channel to the emulator at ``address``.

    ``client.transport.close()`` closes its channel.
    """
    channel = grpc.insecure_channel(address)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGINT, timeout: float = 15) -> int:
    """Ask a server process to stop as Ctrl-C (or ``signum``) would; its exit status.

    Its output is drained meanwhile, so a full pipe cannot keep it from exiting; one that does not
    stop in time is killed, so that no test leaves a server behind, and the test fails.
    """
    proc.send_signal(signum)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGABRT makes a process started with PYTHONFAULTHANDLER=1 print every thread's stack.
        proc.send_signal(signal.SIGABRT)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{proc.args!r} did not stop within {timeout} s.\n"
            f"Its output ends: {_tail(stdout)}\nIts errors end: {_tail(stderr)}"
        ) from None
    return proc.returncode


def _tail(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    return (output or "")[-6000:]
