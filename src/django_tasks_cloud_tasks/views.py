"""The execute view: Cloud Tasks POSTs a task here, and the answer tells it whether to retry.

It comes in two modes over one set of checks: ``execute`` for WSGI and ``aexecute`` for ASGI (see
``urls.py``), so that neither server pays for an event loop or a thread hop per request.

HTTP in, HTTP out: authentication, payload parsing, task resolution and execution each live in
their own module. Bad requests get a 4xx with a reason and never run anything; only a task that
raised answers 500, which makes Cloud Tasks retry it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpRequest, JsonResponse
from django.tasks import Task, TaskResult, TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask
from django.views.decorators.csrf import csrf_exempt

from . import execution
from .auth import Policy, Refused, authenticate
from .backend import CloudTasksBackend
from .payload import MAX_BODY_BYTES, InvalidPayload, Payload, decode
from .resolution import resolve_task

if TYPE_CHECKING:
    from .config import CloudTasksConfig
    from .store import AlreadySucceeded, StillRunning

logger = logging.getLogger(__name__)

RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"
RETRY_COUNT_META = "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT"
TASK_NAME_META = "HTTP_X_CLOUDTASKS_TASKNAME"


def _refuse(status: int, reason: str, task_id: str | None = None) -> JsonResponse:
    logger.warning("Refused a task request (%s): %s", status, reason)
    body = {"status": "refused", "reason": reason}
    if task_id:
        body["task_id"] = task_id
    return JsonResponse(body, status=status)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A request that passed every check: the task to run and how."""

    sender: type[CloudTasksBackend]
    task: Task[..., Any]
    payload: Payload
    attempt: execution.Attempt
    config: CloudTasksConfig


# Cloud Tasks sends no CSRF token; and a request-wide transaction (ATOMIC_REQUESTS) would hide the
# result store's RUNNING claim from concurrent deliveries until the task finished.
@csrf_exempt
@transaction.non_atomic_requests
def execute(request: HttpRequest) -> JsonResponse:
    """Runs a task in the request's thread; what WSGI servers (gunicorn) call."""
    delivery = _accept(request)
    if isinstance(delivery, JsonResponse):
        return delivery
    if delivery.config.store_results:
        return _execute_stored(delivery)
    result = execution.start(delivery.sender, delivery.task, delivery.payload, delivery.attempt)
    return _outcome(execution.run(delivery.sender, result))


@csrf_exempt
@transaction.non_atomic_requests
async def aexecute(request: HttpRequest) -> JsonResponse:
    """Awaits async task functions on the server's event loop; what ASGI servers call."""
    delivery = _accept(request)
    if isinstance(delivery, JsonResponse):
        return delivery
    if delivery.config.store_results:
        return await _aexecute_stored(delivery)
    result = execution.start(delivery.sender, delivery.task, delivery.payload, delivery.attempt)
    return _outcome(await execution.arun(delivery.sender, result))


# With STORE_RESULTS, an attempt first claims the task in the store (which imports the models, so
# only then), and records the outcome after running it. See store.claim for the rules.


def _execute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    claim = store.claim(delivery.payload, delivery.attempt, delivery.config.attempt_deadline)
    if not isinstance(claim, execution.Claim):
        return _not_run(claim)
    result = execution.start(
        delivery.sender, delivery.task, delivery.payload, delivery.attempt, claim
    )
    store.record_finished(execution.run(delivery.sender, result), claim)
    return _outcome(result)


async def _aexecute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    claim = await store.aclaim(delivery.payload, delivery.attempt, delivery.config.attempt_deadline)
    if not isinstance(claim, execution.Claim):
        return _not_run(claim)
    result = execution.start(
        delivery.sender, delivery.task, delivery.payload, delivery.attempt, claim
    )
    await store.arecord_finished(await execution.arun(delivery.sender, result), claim)
    return _outcome(result)


def _not_run(verdict: AlreadySucceeded | StillRunning) -> JsonResponse:
    from .store import AlreadySucceeded

    if isinstance(verdict, AlreadySucceeded):
        # Cloud Tasks delivers at least once: acknowledge the copy, or it would retry it.
        return JsonResponse({"status": "success", "task_id": verdict.task_id, "duplicate": True})
    reason = "another attempt of this task is running; retry after its dispatch deadline"
    logger.info("Task %s not run: %s", verdict.task_id, reason)
    response = JsonResponse(
        {"status": "running", "task_id": verdict.task_id, "reason": reason}, status=409
    )
    response["Retry-After"] = str(verdict.retry_after)
    return response


def _accept(request: HttpRequest) -> _Delivery | JsonResponse:
    """Authenticate, parse and resolve the request, or answer why not."""
    if request.method != "POST":
        response = _refuse(405, f"method {request.method} is not allowed; Cloud Tasks POSTs")
        response["Allow"] = "POST"
        return response
    if _declared_length(request) > MAX_BODY_BYTES:
        return _refuse(413, f"body is larger than Cloud Tasks' {MAX_BODY_BYTES} byte task limit")

    backends = _cloud_tasks_backends()
    try:
        allowed = authenticate(request, backends.policy)
        payload = decode(request.body)
    except Refused as refusal:
        return _refuse(refusal.status, refusal.reason)
    except InvalidPayload as exc:
        return _refuse(400, str(exc))

    if payload.backend not in allowed:
        return _refuse(
            403 if payload.backend in backends.by_alias else 400,
            f"backend {payload.backend!r} is not a CloudTasksBackend this request may use",
            payload.task_id,
        )
    try:
        attempt = _attempt(request)
        task = _task_as_enqueued(
            payload.task_path, payload.backend, payload.queue_name, payload.priority
        )
        _check_arguments(task, payload)
    except (InvalidTask, ValueError) as exc:
        return _refuse(400, str(exc), payload.task_id)
    except LookupError as exc:
        return _refuse(404, str(exc), payload.task_id)
    backend = backends.by_alias[payload.backend]
    return _Delivery(type(backend), task, payload, attempt, backend.config)


def _outcome(result: TaskResult[..., Any]) -> JsonResponse:
    # Not `if result.errors`: with a result store they include earlier attempts' errors.
    if result.status == TaskResultStatus.FAILED:
        error = result.errors[-1].traceback.rstrip().rpartition("\n")[2]
        return JsonResponse({"status": "error", "task_id": result.id, "error": error}, status=500)
    return JsonResponse({"status": "success", "task_id": result.id})


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class _Backends:
    """The project's CloudTasksBackend aliases, and who may run tasks for them."""

    by_alias: Mapping[str, CloudTasksBackend]
    policy: Policy


# Kept per process until TASKS changes. Django builds a backend per thread, but the view reads only
# a backend's class and configuration, which are the same in every thread.
@cache
def _cloud_tasks_backends() -> _Backends:
    backends = {
        alias: backend
        for alias in task_backends.settings
        if isinstance(backend := task_backends[alias], CloudTasksBackend)
    }
    policy = Policy.of({alias: backend.config for alias, backend in backends.items()})
    return _Backends(by_alias=backends, policy=policy)


def _attempt(request: HttpRequest) -> execution.Attempt:
    # META, not request.headers: building the headers mapping costs more than the rest of this.
    task_name = request.META.get(TASK_NAME_META)
    retries = request.META.get(RETRY_COUNT_META)
    if retries is None:
        return execution.Attempt(number=1, task_name=task_name)
    if not (retries.isdecimal() and len(retries) < 10):
        raise ValueError(f"{RETRY_COUNT_HEADER} must be a whole number, not {retries[:20]!r}")
    return execution.Attempt(number=int(retries) + 1, task_name=task_name)


def _check_arguments(task: Task[..., Any], payload: Payload) -> None:
    # A call that cannot bind would fail on every retry: refuse it as bad input instead.
    positional = len(payload.args) + task.takes_context
    error = _binding_error(task.func, positional, tuple(payload.kwargs))
    if error is not None:
        raise ValueError(f"{payload.task_path} does not accept these arguments: {error}")


@lru_cache(maxsize=1024)
def _binding_error(
    func: Callable[..., Any], positional: int, keywords: tuple[str, ...]
) -> str | None:
    """Why a call with this many positional arguments and these keywords cannot bind, if it can't.

    Binding looks only at how many positional arguments there are and at the keywords' names,
    never at values, so the verdict holds for every call of this shape.
    """
    try:
        inspect.signature(func).bind(*range(positional), **dict.fromkeys(keywords))
    except TypeError as exc:
        return str(exc)
    return None


# Kept per process: finding the task (an import check against the installed apps) and validating
# it for its backend and queue (Task.using) cost more than every other lookup of a delivery. A
# failed lookup raises, so only tasks are kept, and a change of the settings they depend on clears
# them (below).
@lru_cache(maxsize=256)
def _task_as_enqueued(
    task_path: str, backend: str, queue_name: str, priority: int
) -> Task[..., Any]:
    """The task with the backend, queue and priority it was enqueued with (``Task.using``)."""
    task = _task(task_path)
    if (task.backend, task.queue_name, task.priority) == (backend, queue_name, priority):
        return task  # Validated when it was defined; using() would validate it again.
    return task.using(backend=backend, queue_name=queue_name, priority=priority)


@receiver(setting_changed)
def _forget_backends_and_tasks(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKS":
        _cloud_tasks_backends.cache_clear()
    if setting in {"TASKS", "INSTALLED_APPS"}:
        _task_as_enqueued.cache_clear()


def _task(task_path: str) -> Task[..., Any]:
    task = resolve_task(task_path)
    if task is None:
        raise LookupError(f"{task_path!r} is not a django.tasks.Task of this project")
    return task
