"""The calls to Cloud Tasks: the clients, retries inside one deadline, and errors a user can act on.

Clients are built once per process (per event loop for async) and reused. Django builds a backend
instance per thread and per async context, so clients cannot live on the backend: a client per
instance (or per call) halves throughput against the emulator and costs a credentials lookup per
construction against Google. gRPC clients are thread-safe, so one sync client serves every thread;
an async client is bound to the event loop its channel was created on, and is dropped once that
loop is closed (``asyncio.run`` and ``async_to_sync`` close one per call).

``CreateTask`` has no retry of its own (a retry of an unnamed task could add it twice). Here a
transient failure is retried with exponential backoff and jitter inside ``ENQUEUE_DEADLINE``, but
only for a task named before its first attempt (``NAMED_TASKS``): then ``ALREADY_EXISTS`` means an
earlier attempt, or another process, added it, which is success. Every failure is translated here,
next to the call, into an error that says whether the task was not added or may have been.

``google.cloud.tasks_v2`` and ``google.api_core`` cost about a quarter of a second to import, so
they are imported on first use rather than when Django loads the backend.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from . import tracing
from .exceptions import CloudTasksError, EnqueueOutcomeUnknown

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.tasks_v2 import CloudTasksAsyncClient, CloudTasksClient

    from .config import CloudTasksConfig

_sync_clients: dict[str | None, CloudTasksClient] = {}
# Keyed by loop; closed loops are pruned whenever a new loop asks (see async_client).
_async_clients: dict[asyncio.AbstractEventLoop, dict[str | None, CloudTasksAsyncClient]] = {}
_credentials: list[Credentials] = []
_lock = threading.Lock()

# Backoff between attempts: the first waits up to 0.1 s, each later one up to twice as long, at
# most 2 s ("full jitter": a random wait below that cap, so that clients do not retry in step).
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 2.0
# An attempt may use at most this share of the deadline (and at least a second), so that a server
# that swallows one call leaves time for two more.
_ATTEMPT_SHARE = 1 / 3
_MIN_ATTEMPT_TIMEOUT = 1.0
# gRPC's words for a call that never reached a server: the task was certainly not added.
_NEVER_CONNECTED = "failed to connect to all addresses"


# --- creating one task -------------------------------------------------------------------------


def create_task(
    config: CloudTasksConfig, queue_id: str, request: dict[str, Any], result_id: str
) -> str:
    """Add a task to Cloud Tasks and return its name, retrying what is safe to retry.

    Raises ``CloudTasksError`` if the task was not added, ``EnqueueOutcomeUnknown`` if it may
    have been, and ``ImproperlyConfigured`` if no credentials were found.
    """
    attempts = _Attempts(config, queue_id, result_id, named=_named(request))
    with tracing.producing(queue_id, [request], result_id):
        while True:
            try:
                client = sync_client(config.emulator_host)
                return str(client.create_task(request=request, timeout=attempts.timeout()).name)
            except Exception as exc:  # classified by _Attempts
                if attempts.already_added(exc):
                    return str(request["task"]["name"])
                time.sleep(attempts.backoff(exc))


async def acreate_task(
    config: CloudTasksConfig, queue_id: str, request: dict[str, Any], result_id: str
) -> str:
    """``create_task`` with the event loop's async client."""
    attempts = _Attempts(config, queue_id, result_id, named=_named(request))
    with tracing.producing(queue_id, [request], result_id):
        while True:
            try:
                client = async_client(config.emulator_host)
                task = await client.create_task(request=request, timeout=attempts.timeout())
                return str(task.name)
            except Exception as exc:  # classified by _Attempts
                if attempts.already_added(exc):
                    return str(request["task"]["name"])
                await asyncio.sleep(attempts.backoff(exc))


def _named(request: dict[str, Any]) -> bool:
    return bool(request["task"].get("name"))


class _Attempts:
    """One enqueue's attempts: its deadline and backoff, and what the failures so far mean."""

    def __init__(self, config: CloudTasksConfig, queue_id: str, result_id: str, *, named: bool):
        self.config = config
        self.queue_id = queue_id
        self.result_id = result_id
        self.named = named
        self.started = time.monotonic()
        self.deadline = self.started + config.enqueue_deadline
        self.attempt_timeout = max(config.enqueue_deadline * _ATTEMPT_SHARE, _MIN_ATTEMPT_TIMEOUT)
        self.sleeps: Iterator[float] | None = None
        # Whether an earlier attempt may have added the task although it failed.
        self.maybe_added = False

    def timeout(self) -> float:
        return max(min(self.deadline - time.monotonic(), self.attempt_timeout), 0.001)

    def already_added(self, exc: Exception) -> bool:
        """Whether ``exc`` says the named task exists: added by an earlier attempt (or another
        process enqueueing the same result id, as recovery does)."""
        from google.api_core import exceptions as api

        # REST answers 409 as Conflict, gRPC's ALREADY_EXISTS is its subclass.
        return self.named and isinstance(exc, api.Conflict)

    def backoff(self, exc: Exception, *, refused: bool = False) -> float:
        """Seconds to wait before the next attempt, or raise the error to give up with.

        ``refused``: the server said it did not do the work, whatever the status code.
        """
        from google.api_core import exceptions as api
        from google.api_core.retry import exponential_sleep_generator

        outcome_unknown = not refused and _outcome_unknown(exc)
        self.maybe_added = self.maybe_added or outcome_unknown
        retryable = isinstance(exc, _retryable()) and (self.named or not outcome_unknown)
        if self.config.emulator_host and _never_connected(exc):
            # An emulator that refuses connections is not running: waiting will not start it.
            retryable = False
        if retryable:
            if self.sleeps is None:
                self.sleeps = exponential_sleep_generator(_FIRST_BACKOFF, _MAX_BACKOFF, 2.0)
            delay = next(self.sleeps)
            # Give up rather than start an attempt with no time left to answer.
            if time.monotonic() + delay + _FIRST_BACKOFF < self.deadline:
                return delay
        if self.maybe_added and isinstance(exc, api.GoogleAPIError):
            raise self.unknown(exc) from exc
        error = translate(exc, self.config, self.queue_id)
        if error is None:
            raise exc
        raise error from exc

    def unknown(self, exc: Exception) -> EnqueueOutcomeUnknown:
        config = self.config
        queue = config.queue_path(self.queue_id)
        waited = time.monotonic() - self.started
        where = (
            f"`gcloud tasks describe {self.result_id} --queue={self.queue_id} "
            f"--location={config.location} --project={config.project}`"
            if self.named
            else "the queue in the Cloud Console"
        )
        return EnqueueOutcomeUnknown(
            f"Task {self.result_id} may have been added to {queue}: Cloud Tasks did not confirm "
            f"it within {waited:.1f} s (ENQUEUE_DEADLINE is {config.enqueue_deadline:g} s), so "
            f"the outcome is unknown ({_short(exc)}). If it was added it runs with result id "
            f"{self.result_id}; look for it with {where}. Enqueue again only if the task is safe "
            "to run twice: a new enqueue is a new task.",
            queue=queue,
            result_id=self.result_id,
        )


def _retryable() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions as api

    # The codes Google's API design guide (AIP-194) and the Cloud Tasks client's own retry
    # settings treat as transient; ABORTED and RESOURCE_EXHAUSTED were refused before any work.
    return (
        api.ServiceUnavailable,
        api.DeadlineExceeded,
        api.InternalServerError,
        api.Aborted,
        api.ResourceExhausted,
    )


def _outcome_unknown(exc: Exception) -> bool:
    """Whether the server may have done the work although the call failed."""
    from google.api_core import exceptions as api

    if isinstance(exc, api.ServiceUnavailable):
        return not _never_connected(exc)
    return isinstance(
        exc, api.DeadlineExceeded | api.InternalServerError | api.Unknown | api.Cancelled
    )


def _never_connected(exc: Exception) -> bool:
    from google.api_core import exceptions as api

    return isinstance(exc, api.ServiceUnavailable) and _NEVER_CONNECTED in str(exc)


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"


def translate(exc: Exception, config: CloudTasksConfig, queue_id: str) -> Exception | None:
    """The error a user can act on for a call that did not add the task; None: not ours."""
    # Imported here: google.api_core costs ~0.2 s to import and is only needed once a call failed.
    from google.api_core import exceptions as api
    from google.auth.exceptions import DefaultCredentialsError

    queue = config.queue_path(queue_id)
    if isinstance(exc, DefaultCredentialsError):
        return ImproperlyConfigured(
            "No Google Cloud credentials were found to create Cloud Tasks tasks. On Cloud Run and "
            "App Engine they come from the runtime service account; elsewhere run `gcloud auth "
            "application-default login`, or set CLOUD_TASKS_EMULATOR_HOST to use the local "
            f"emulator. ({exc})"
        )
    if isinstance(exc, api.NotFound | api.FailedPrecondition):
        fix = (
            f"start the emulator with `python manage.py cloudtasks_emulator --queue {queue_id}`"
            if config.emulator_host
            else f"create it with `gcloud tasks queues create {queue_id} "
            f"--location={config.location} --project={config.project}`"
        )
        message = f"Cloud Tasks queue {queue} does not exist: {fix}."
    elif isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.RetryError):
        if config.emulator_host:
            message = (
                f"The Cloud Tasks emulator at {config.emulator_host} (CLOUD_TASKS_EMULATOR_HOST) "
                f"did not answer, so no task was added to {queue}: start it with `python manage.py "
                "cloudtasks_emulator`, or unset CLOUD_TASKS_EMULATOR_HOST to use Google Cloud."
            )
        else:
            message = (
                f"Cloud Tasks is unavailable, so no task was added to {queue} within "
                f"ENQUEUE_DEADLINE ({config.enqueue_deadline:g} s); try again later. ({exc})"
            )
    elif isinstance(exc, api.ResourceExhausted):
        message = (
            f"Cloud Tasks refused a task for {queue} for want of quota until ENQUEUE_DEADLINE "
            f"({config.enqueue_deadline:g} s) passed, so no task was added: slow down or ask for "
            f"more quota. ({exc.message})"
        )
    elif isinstance(exc, api.PermissionDenied | api.Unauthenticated):
        message = (
            f"Permission denied creating a task in {queue}: grant the runtime service account "
            "roles/cloudtasks.enqueuer, and roles/iam.serviceAccountUser on the OIDC service "
            f"account when tasks carry OIDC tokens. ({exc.message})"
        )
    elif isinstance(exc, api.GoogleAPIError):
        message = f"Cloud Tasks refused a task for {queue}, so it was not added: {exc}"
    else:
        return None
    return CloudTasksError(message, queue=queue)


# --- creating many tasks -----------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """What became of each request of a bulk enqueue, by its index."""

    created: dict[int, str] = field(default_factory=dict)  # index: task name
    refused: dict[int, str] = field(default_factory=dict)  # index: reason
    unknown: dict[int, str] = field(default_factory=dict)  # index: reason


def batch_create(
    config: CloudTasksConfig, queue_id: str, requests: list[dict[str, Any]]
) -> BatchOutcome:
    """Create up to ``MAX_BATCH_CREATE`` tasks of one queue in one BatchCreateTasks call (more
    calls only to retry what failed transiently, inside ``ENQUEUE_DEADLINE``)."""
    with tracing.producing(queue_id, requests) as production:
        batch = _Batch(config, queue_id, requests)
        while batch.pending:
            try:
                client = sync_client(config.emulator_host)
                operation = client.batch_create_tasks(
                    request=batch.request(), timeout=batch.timeout()
                )
                response = operation.result(timeout=batch.timeout())
                delay = batch.settle(response, operation.metadata)
            except Exception as exc:  # classified by _Batch
                delay = batch.failed(exc)
            if delay is not None:
                time.sleep(delay)
        production.not_all_added(len(batch.outcome.refused), len(batch.outcome.unknown))
    return batch.outcome


async def abatch_create(
    config: CloudTasksConfig, queue_id: str, requests: list[dict[str, Any]]
) -> BatchOutcome:
    """``batch_create`` with the event loop's async client."""
    with tracing.producing(queue_id, requests) as production:
        batch = _Batch(config, queue_id, requests)
        while batch.pending:
            try:
                client = async_client(config.emulator_host)
                operation = await client.batch_create_tasks(
                    request=batch.request(), timeout=batch.timeout()
                )
                response = await operation.result(timeout=batch.timeout())
                delay = batch.settle(response, operation.metadata)
            except Exception as exc:  # classified by _Batch
                delay = batch.failed(exc)
            if delay is not None:
                await asyncio.sleep(delay)
        production.not_all_added(len(batch.outcome.refused), len(batch.outcome.unknown))
    return batch.outcome


class _Batch:
    """The rounds of one BatchCreateTasks: what is still pending, and what became of the rest."""

    def __init__(
        self, config: CloudTasksConfig, queue_id: str, requests: list[dict[str, Any]]
    ) -> None:
        self.parent = config.queue_path(queue_id)
        self.requests = requests
        self.pending = list(range(len(requests)))
        self.named = all(_named(request) for request in requests)
        self.attempts = _Attempts(config, queue_id, "", named=self.named)
        self.outcome = BatchOutcome()
        # The same request_id for a repeat of the same request: the service answers it with the
        # operation it already ran instead of running it again.
        self.request_id = str(uuid.uuid4())
        self.sent: list[int] | None = None

    def timeout(self) -> float:
        return self.attempts.timeout()

    def request(self) -> dict[str, Any]:
        if self.sent != self.pending:
            self.sent = list(self.pending)
            self.request_id = str(uuid.uuid4())
        return {
            "parent": self.parent,
            "requests": [self.requests[index] for index in self.pending],
            "request_id": self.request_id,
        }

    def settle(self, response: Any, metadata: Any) -> float | None:
        """Record what one call did; seconds to wait before retrying what failed transiently."""
        from google.api_core import exceptions as api

        failures = dict(metadata.failed_requests) if metadata is not None else {}
        names = iter(task.name for task in response.tasks)
        retry: list[int] = []
        transient: Exception | None = None
        for position, index in enumerate(self.pending):
            status = failures.get(position)
            if status is None:
                self.outcome.created[index] = str(next(names, ""))
                continue
            exc = api.from_grpc_status(_grpc_code(status.code), status.message)
            if self.attempts.already_added(exc):
                self.outcome.created[index] = str(self.requests[index]["task"]["name"])
            elif self.named and isinstance(exc, _retryable()):
                retry.append(index)
                transient = exc
            else:
                self.outcome.refused[index] = _short(exc)
        self.pending = retry
        # The service reported these as not created: retrying them cannot add them twice.
        return None if transient is None else self.failed(transient, refused=True)

    def failed(self, exc: Exception, *, refused: bool = False) -> float | None:
        """Seconds to wait before the next round, or None: what is pending is settled as failed."""
        try:
            return self.attempts.backoff(exc, refused=refused)
        except EnqueueOutcomeUnknown:
            bucket, reason = self.outcome.unknown, _short(exc)
        except (CloudTasksError, ImproperlyConfigured) as error:
            if not self.pending or isinstance(error, ImproperlyConfigured):
                raise
            bucket, reason = self.outcome.refused, str(error)
        for index in self.pending:
            bucket[index] = reason
        self.pending = []
        return None


def _grpc_code(code: int) -> Any:
    import grpc

    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


# --- looking a task up --------------------------------------------------------------------------


def task_exists(config: CloudTasksConfig, name: str) -> bool:
    """Whether Cloud Tasks still has the task ``name`` (GetTask; NOT_FOUND means it has not).

    Cloud Tasks deletes a task once it succeeded, failed for good or was deleted (a queue purged
    or deleted, an emulator restarted without its state). Other errors are raised.
    """
    from google.api_core import exceptions as api

    try:
        sync_client(config.emulator_host).get_task(name=name, timeout=config.enqueue_deadline)
    except api.NotFound:
        return False
    return True


# --- the clients -------------------------------------------------------------------------------


def sync_client(emulator_host: str | None) -> CloudTasksClient:
    """The process's client for Google (``None``) or for the emulator at ``emulator_host``."""
    client = _sync_clients.get(emulator_host)
    if client is None:
        with _lock:
            client = _sync_clients.get(emulator_host)
            if client is None:
                client = _sync_clients[emulator_host] = _build_sync(emulator_host)
    return client


def async_client(emulator_host: str | None) -> CloudTasksAsyncClient:
    """The running event loop's client; must be called from a coroutine.

    A loop seen for the first time drops the clients of closed loops, so that their channels
    and loops can be collected: the clients of at most the loops still open are kept.
    """
    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        with _lock:
            for closed in [other for other in _async_clients if other.is_closed()]:
                del _async_clients[closed]
            clients = _async_clients.setdefault(loop, {})
    client = clients.get(emulator_host)
    if client is None:
        client = clients[emulator_host] = _build_async(emulator_host)
    return client


def _build_sync(emulator_host: str | None) -> CloudTasksClient:
    from google.cloud.tasks_v2 import CloudTasksClient

    if emulator_host is None:
        return CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    # api_endpoint would give a TLS channel, which an emulator does not speak.
    channel = grpc.insecure_channel(emulator_host)
    return CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def _build_async(emulator_host: str | None) -> CloudTasksAsyncClient:
    from google.cloud.tasks_v2 import CloudTasksAsyncClient

    if emulator_host is None:
        # Every loop needs a client of its own, but not a credentials lookup of its own.
        return CloudTasksAsyncClient(credentials=_default_credentials())
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(emulator_host)
    return CloudTasksAsyncClient(transport=CloudTasksGrpcAsyncIOTransport(channel=channel))


def _default_credentials() -> Credentials:
    if not _credentials:
        import google.auth
        from google.cloud.tasks_v2.services.cloud_tasks.transports.base import (
            CloudTasksTransport,
        )

        credentials, _ = google.auth.default(scopes=CloudTasksTransport.AUTH_SCOPES)
        with _lock:
            if not _credentials:
                _credentials.append(credentials)
    return _credentials[0]


# Clients a forked child inherited: kept, never used, so that their channels are not finalised in
# the child (closing a gRPC channel there touches the parent's state and can hang).
_inherited: list[object] = []


def _forget_clients() -> None:
    # gRPC channels do not survive fork(): a child (gunicorn --preload) builds its own.
    _inherited.append((dict(_sync_clients), dict(_async_clients), list(_credentials)))
    _sync_clients.clear()
    _async_clients.clear()
    _credentials.clear()


os.register_at_fork(after_in_child=_forget_clients)
