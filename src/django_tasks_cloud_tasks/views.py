"""The execute view: Cloud Tasks POSTs a task here, and the answer tells it whether to retry.

It comes in two modes over one set of checks: ``execute`` for WSGI and ``aexecute`` for ASGI (see
``urls.py``), so that neither server pays for an event loop or a thread hop per request.

This module is the HTTP edge and nothing else: it reads the request, hands each check to its owner
(``auth`` for who may call, ``payload`` for the body, ``resolution`` for the task and its
arguments, ``execution`` and ``store`` for running it) and turns the outcome into a response. A
check that fails raises ``Refused``, answered in one place (``_refused``) with a 4xx and a reason;
nothing has run then. Only a task that raised answers 500, which makes Cloud Tasks retry it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.tasks import Task, TaskResult, TaskResultStatus
from django.views.decorators.csrf import csrf_exempt

from . import execution
from .auth import authenticate, cloud_tasks_backends
from .backend import CloudTasksBackend
from .exceptions import Refused
from .payload import MAX_BODY_BYTES, Payload, decode
from .resolution import check_arguments, task_as_enqueued

if TYPE_CHECKING:
    from .config import CloudTasksConfig
    from .store import AlreadySucceeded, StillRunning

__all__ = ["aexecute", "execute"]

logger = logging.getLogger(__name__)

RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"
RETRY_COUNT_META = "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT"
TASK_NAME_META = "HTTP_X_CLOUDTASKS_TASKNAME"


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A request that passed every check: the task to run and how."""

    backend_class: type[CloudTasksBackend]
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
    try:
        delivery = _accept(request)
    except Refused as refusal:
        return _refused(refusal)
    if delivery.config.store_results:
        return _execute_stored(delivery)
    result = execution.start(
        delivery.backend_class, delivery.task, delivery.payload, delivery.attempt
    )
    return _outcome(execution.run(delivery.backend_class, result))


@csrf_exempt
@transaction.non_atomic_requests
async def aexecute(request: HttpRequest) -> JsonResponse:
    """Awaits async task functions on the server's event loop; what ASGI servers call."""
    try:
        delivery = _accept(request)
    except Refused as refusal:
        return _refused(refusal)
    if delivery.config.store_results:
        return await _aexecute_stored(delivery)
    result = execution.start(
        delivery.backend_class, delivery.task, delivery.payload, delivery.attempt
    )
    return _outcome(await execution.arun(delivery.backend_class, result))


def _accept(request: HttpRequest) -> _Delivery:
    """Authenticate, parse and resolve the request, or raise ``Refused`` saying why not."""
    if request.method != "POST":
        raise Refused(
            405,
            f"method {request.method} is not allowed; Cloud Tasks POSTs",
            headers={"Allow": "POST"},
        )
    if _declared_length(request) > MAX_BODY_BYTES:
        raise Refused(413, f"body is larger than Cloud Tasks' {MAX_BODY_BYTES} byte task limit")
    backends = cloud_tasks_backends()
    allowed = authenticate(request, backends.policy)
    payload = decode(request.body)
    try:
        backend = backends.permitted(payload.backend, allowed)
        attempt = _attempt(request)
        task = task_as_enqueued(
            payload.task_path, payload.backend, payload.queue_name, payload.priority
        )
        check_arguments(task, payload)
    except Refused as refusal:
        refusal.task_id = payload.task_id
        raise
    return _Delivery(type(backend), task, payload, attempt, backend.config)


def _refused(refusal: Refused) -> JsonResponse:
    logger.warning("Refused a task request (%s): %s", refusal.status, refusal.reason)
    body = {"status": "refused", "reason": refusal.reason}
    if refusal.task_id:
        body["task_id"] = refusal.task_id
    return JsonResponse(body, status=refusal.status, headers=refusal.headers)


# With STORE_RESULTS, an attempt first claims the task in the store (which imports the models, so
# only then), and records the outcome after running it. See store.claim for the rules.


def _execute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    claim = store.claim(delivery.payload, delivery.attempt, delivery.config.attempt_deadline)
    if not isinstance(claim, execution.Claim):
        return _not_run(claim)
    result = execution.start(
        delivery.backend_class, delivery.task, delivery.payload, delivery.attempt, claim
    )
    store.record_finished(execution.run(delivery.backend_class, result), claim)
    return _outcome(result)


async def _aexecute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    claim = await store.aclaim(delivery.payload, delivery.attempt, delivery.config.attempt_deadline)
    if not isinstance(claim, execution.Claim):
        return _not_run(claim)
    result = execution.start(
        delivery.backend_class, delivery.task, delivery.payload, delivery.attempt, claim
    )
    await store.arecord_finished(await execution.arun(delivery.backend_class, result), claim)
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


def _attempt(request: HttpRequest) -> execution.Attempt:
    # META, not request.headers: building the headers mapping costs more than the rest of this.
    task_name = request.META.get(TASK_NAME_META)
    retries = request.META.get(RETRY_COUNT_META)
    if retries is None:
        return execution.Attempt(number=1, task_name=task_name)
    if not (retries.isdecimal() and len(retries) < 10):
        raise Refused(400, f"{RETRY_COUNT_HEADER} must be a whole number, not {retries[:20]!r}")
    return execution.Attempt(number=int(retries) + 1, task_name=task_name)
