"""``Emulator``: a local Cloud Tasks v2 service over real gRPC that really dispatches tasks."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.cloud import tasks_v2

from .console import Console
from .dispatcher import Dispatcher
from .faults import Fault, Faults, status_code
from .names import check_queue_name, location_name
from .persistence import Journal
from .records import DispatchRecord
from .service import CloudTasksService, oidc_config_handler, unimplemented_handler
from .state import Store
from .tokens import TokenServer, TokenSigner

DEFAULT_TOMBSTONE_SECONDS = 24 * 3600.0
# How long a deleted queue's name stays unusable: the 7 days of Cloud Tasks' quotas page (the
# DeleteQueue docstring says "up to 3 days"; the longer figure is the one a script must survive).
DEFAULT_QUEUE_REUSE_SECONDS = 7 * 24 * 3600.0
_GRPC_THREADS = 16
_STOP_TIMEOUT = 0.5


class Emulator:
    """Cloud Tasks for tests and development, in this process.

    Point the unmodified ``CloudTasksClient`` at ``address`` over an insecure channel. Tasks are
    POSTed (or PUT, ...) to their URLs when due, with Cloud Tasks' headers, retries and OIDC
    tokens; verify the tokens against ``certs_url``. Any project and location are accepted;
    ``project`` and ``location`` are only the defaults for ``queues`` and ``create_queue``.

    ``state_file``: a SQLite file that keeps queues, tasks, reserved names and attempts across
    restarts (created if missing); without it everything is in memory. ``queue_reuse_seconds``:
    how long a deleted queue's name cannot be used again (tests usually want 0). The web page is
    at ``console_url``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        project: str = "demo-project",
        location: str = "us-central1",
        queues: Iterable[str] = ("default",),
        token_port: int = 0,
        log: Callable[[str], None] | None = None,
        tombstone_seconds: float = DEFAULT_TOMBSTONE_SECONDS,
        issuer: str | None = None,
        queue_reuse_seconds: float = DEFAULT_QUEUE_REUSE_SECONDS,
        state_file: str | Path | None = None,
    ) -> None:
        if issuer is not None and not issuer.startswith(("http://", "https://")):
            raise ValueError(f"issuer must be an http:// or https:// URL, not {issuer!r}")
        self._host = host
        self._port = port
        self._project = project
        self._location = location
        self._token_port = token_port
        # The URL others reach the token server at, when that is not http://host:token_port
        # (say, another container's name for this one).
        self._issuer_url = issuer.rstrip("/") if issuer else None
        self._log = log
        journal = Journal(state_file) if state_file is not None else None
        self._journal = journal
        self._store = Store(
            tombstone_seconds=tombstone_seconds,
            queue_reuse_seconds=queue_reuse_seconds,
            journal=journal,
        )
        self._faults = Faults()
        self._started = False
        self._address: str | None = None
        self._issuer: str | None = None
        self._tokens: TokenServer | None = None
        self._signer: TokenSigner | None = None
        self._dispatcher: Dispatcher | None = None
        self._grpc_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._grpc_server: Any = None
        self._jobs = _job_store()
        self._job_runner: Any = None
        for queue_id in queues:
            # A queue kept in the state file stays as it was saved.
            name = f"{location_name(project, location)}/queues/{queue_id}"
            if not self._store.has_queue(name):
                self.create_queue(queue_id)

    def start(self) -> Self:
        """Start serving and dispatching in background threads; returns at once."""
        if self._started:
            raise RuntimeError("An Emulator can be started only once.")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC service."""
        if self._address is None:
            raise RuntimeError("The emulator has not been started.")
        return self._address

    @property
    def issuer(self) -> str:
        """The ``iss`` of the OIDC tokens: the URL of the token server (or the ``issuer`` given)."""
        if self._issuer is None:
            raise RuntimeError("The emulator has not been started.")
        return self._issuer

    @property
    def certs_url(self) -> str:
        """Where the token signing keys are, as ``{kid: X.509 certificate PEM}``."""
        return f"{self.issuer}/certs"

    @property
    def console_url(self) -> str:
        """The web page showing queues, tasks and attempts (on the token server's port)."""
        if self._tokens is None:
            raise RuntimeError("The emulator has not been started.")
        return f"{self._tokens.url}/"

    @property
    def dispatches(self) -> list[DispatchRecord]:
        """The attempts since the start or the last ``reset`` (at most the latest 10,000),
        oldest first (a copy)."""
        return self._store.records()

    @property
    def schedule_attempts(self) -> list[Any]:
        """Every request Cloud Scheduler jobs made, oldest first (``schedules.JobAttempt``)."""
        return self._jobs.records() if self._jobs is not None else []

    def create_queue(
        self,
        name: str,
        project: str | None = None,
        location: str | None = None,
        *,
        max_attempts: int | None = None,
        min_backoff: float | None = None,
        max_backoff: float | None = None,
        max_doublings: int | None = None,
        max_retry_duration: float | None = None,
        max_dispatches_per_second: float | None = None,
        max_concurrent_dispatches: int | None = None,
        max_burst_size: int | None = None,
    ) -> tasks_v2.Queue:
        """Create queue ``name`` as CreateQueue would, with its errors; durations in seconds."""
        parent = location_name(project or self._project, location or self._location)
        queue = tasks_v2.Queue(
            name=check_queue_name(f"{parent}/queues/{name}"),
            rate_limits=_present(
                max_dispatches_per_second=max_dispatches_per_second,
                max_concurrent_dispatches=max_concurrent_dispatches,
                max_burst_size=max_burst_size,
            ),
            retry_config=_present(
                max_attempts=max_attempts,
                min_backoff=_duration(min_backoff),
                max_backoff=_duration(max_backoff),
                max_doublings=max_doublings,
                max_retry_duration=_duration(max_retry_duration),
            ),
        )
        return self._store.create_queue(queue)

    def mint_token(self, *, email: str, audience: str) -> str:
        """An ID token signed like those the emulator attaches to dispatches: for tests that call
        a view directly, as Cloud Tasks would."""
        if self._signer is None:
            raise RuntimeError("The emulator has not been started.")
        return self._signer.mint(email=email, audience=audience)

    def inject_fault(
        self,
        method: str,
        *,
        status: grpc.StatusCode | str | None = None,
        after_success: bool = False,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> None:
        """Make the next ``times`` calls of gRPC ``method`` (e.g. ``"CreateTask"``) misbehave.

        - ``status`` alone: the call is refused with that status (``grpc.StatusCode`` or its
          name, e.g. ``"UNAVAILABLE"``) and does nothing.
        - ``status`` with ``after_success=True``: the call does its work (the task is created),
          then answers with that status, as when an answer is lost on the way back.
        - ``delay``: seconds before the answer (the error's or the success's); a client whose
          deadline passes first sees DEADLINE_EXCEEDED, although the work may be done.

        ``times=None`` applies to every call until ``clear_faults`` (or ``reset``). Plans for
        one method apply in the order they were added. Works before and after ``start``.
        """
        code = status_code(status) if isinstance(status, str) else status
        self._faults.add(
            Fault(method, status=code, after_success=after_success, delay=delay, times=times)
        )

    def clear_faults(self) -> None:
        """Drop every fault plan not used up yet."""
        self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        """The fault plans not used up yet, in order (copies)."""
        return self._faults.pending()

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no task is scheduled (in any queue, paused or not) or in flight.

        Returns False if that does not happen within ``timeout`` seconds.
        """
        return self._store.wait_until_idle(timeout)

    def reset(self) -> None:
        """Drop every task, tombstone, dispatch record and fault plan; the queues stay as they are.

        Attempts already under way still reach their targets, but are neither recorded nor
        retried.
        """
        self._store.reset()
        self._faults.clear()

    def stop(self) -> None:
        """Stop serving and dispatching; attempts still waiting on their targets are abandoned."""
        # Outside in: no new requests, then no new attempts, then no key documents.
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._grpc_executor is not None:
            self._grpc_executor.shutdown(cancel_futures=True)
            self._grpc_executor = None
        self._store.close()
        if self._job_runner is not None:
            self._job_runner.stop()
            self._job_runner = None
        if self._dispatcher is not None:
            self._dispatcher.stop(_STOP_TIMEOUT)
            self._dispatcher = None
        # After the dispatcher, so that attempts settled while stopping are saved too.
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._tokens is not None:
            self._tokens.stop()
            self._tokens = None

    def __enter__(self) -> Self:
        return self if self._started else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        if self._journal is not None:
            self._journal.start()
        self._tokens = TokenServer(self._host, self._token_port)
        issuer = self._issuer_url or self._tokens.url
        self._signer = TokenSigner(issuer)
        console = Console(self._store, f"Cloud Tasks emulator ({self._project})")
        self._tokens.start(self._signer.documents(), console)
        self._dispatcher = Dispatcher(self._store, self._signer, self._log)
        self._dispatcher.start()
        self._grpc_executor = concurrent.futures.ThreadPoolExecutor(
            _GRPC_THREADS, thread_name_prefix="cloud-tasks-emulator-grpc"
        )
        # Without this, a second emulator on a fixed port would silently share it.
        self._grpc_server = grpc.server(self._grpc_executor, options=[("grpc.so_reuseport", 0)])
        port = self._grpc_server.add_insecure_port(f"{self._host}:{self._port}")
        handlers = [
            CloudTasksService(self._store, self._faults).handler(),
            oidc_config_handler(issuer, f"{issuer}/certs"),
        ]
        if self._jobs is not None:
            from .scheduler import CloudSchedulerService, JobRunner

            self._job_runner = JobRunner(self._jobs, self._signer, self._log)
            self._job_runner.start()
            handlers.append(
                CloudSchedulerService(self._jobs, self._job_runner, self._faults).handler()
            )
        # Last: it answers every method the handlers before it do not serve.
        handlers.append(unimplemented_handler())
        self._grpc_server.add_generic_rpc_handlers(tuple(handlers))
        self._grpc_server.start()
        self._address = f"{self._host}:{port}"
        self._issuer = issuer


def _job_store() -> Any:
    """Cloud Scheduler's jobs, if google-cloud-scheduler (the ``scheduler`` extra) is installed."""
    try:
        from .schedules import JobStore
    except ImportError:
        return None
    return JobStore()


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that were given, so that the rest keep their defaults."""
    return {key: value for key, value in fields.items() if value is not None}


def _duration(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)
