"""The execute view: Cloud Tasks POSTs a task here, and the answer tells it whether to retry.

It comes in two modes over one set of checks: ``execute`` for WSGI and ``aexecute`` for ASGI (see
``urls.py``), so that neither server pays for an event loop or a thread hop per request.

This module is the HTTP edge and nothing else: it reads the request, hands each check to its owner
(``auth`` for who may call, ``payload`` for the body, ``resolution`` for the task and its
arguments, ``execution`` and ``store`` for running it) and turns the outcome into a response. A
check that fails raises ``Refused``, answered in one place (``_refused``) with a 4xx and a reason;
nothing has run then.

The status code is a retry decision (docs/failures.md): 500 when a retry can fix it (the task
raised; the server failed before the task ran), 2xx when the task succeeded or failed for good.
Bodies name an exception's class only; the log has the rest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.signals import got_request_exception
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.tasks import Task, TaskResultStatus
from django.utils.log import log_message, request_logger
from django.views.decorators.csrf import csrf_exempt

from . import execution, leases, tracing
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
@tracing.traced_request  # The task's trace: its own log lines and the tasks it enqueues carry it.
def execute(request: HttpRequest) -> JsonResponse:
    """Runs a task in the request's thread; what WSGI servers (gunicorn) call."""
    payload = None
    try:
        allowed = _allowed_backends(request)
        payload = decode(request.body)
        delivery = _delivery(request, payload, allowed)
        if delivery.config.store_results:
            return _execute_stored(delivery)
        result = execution.start(delivery.backend_class, delivery.task, payload, delivery.attempt)
        return _answer(execution.run(delivery.backend_class, result), delivery.config)
    except Refused as refusal:
        return _refused(refusal, payload)
    except Exception as exc:
        return _server_fault(request, exc, payload)


@csrf_exempt
@transaction.non_atomic_requests
@tracing.traced_request
async def aexecute(request: HttpRequest) -> JsonResponse:
    """Awaits async task functions on the server's event loop; what ASGI servers call."""
    payload = None
    try:
        allowed = _allowed_backends(request)
        payload = decode(request.body)
        delivery = _delivery(request, payload, allowed)
        if delivery.config.store_results:
            return await _aexecute_stored(delivery)
        result = execution.start(delivery.backend_class, delivery.task, payload, delivery.attempt)
        return _answer(await execution.arun(delivery.backend_class, result), delivery.config)
    except Refused as refusal:
        return _refused(refusal, payload)
    except Exception as exc:
        return _server_fault(request, exc, payload)


def _allowed_backends(request: HttpRequest) -> frozenset[str]:
    """The backends this request may run tasks for, checked before its body is read."""
    if request.method != "POST":
        raise Refused(
            405,
            f"method {request.method} is not allowed; Cloud Tasks POSTs",
            headers={"Allow": "POST"},
        )
    if _declared_length(request) > MAX_BODY_BYTES:
        raise Refused(413, f"body is larger than Cloud Tasks' {MAX_BODY_BYTES} byte task limit")
    return authenticate(request, cloud_tasks_backends().policy)


def _delivery(request: HttpRequest, payload: Payload, allowed: frozenset[str]) -> _Delivery:
    """The task the payload names, for a backend the request may use, or ``Refused``."""
    backend = cloud_tasks_backends().permitted(payload.backend, allowed)
    attempt = _attempt(request)
    task = task_as_enqueued(
        payload.task_path, payload.backend, payload.queue_name, payload.priority
    )
    check_arguments(task, payload)
    return _Delivery(type(backend), task, payload, attempt, backend.config)


def _refused(refusal: Refused, payload: Payload | None) -> JsonResponse:
    logger.warning(
        "Refused a task request (%s): %s",
        refusal.status,
        refusal.reason,
        extra=_fields(payload, None) if payload is not None else None,
    )
    body = {"status": "refused", "reason": refusal.reason}
    if payload is not None:
        body["task_id"] = payload.task_id
    return JsonResponse(body, status=refusal.status, headers=refusal.headers)


def _server_fault(request: HttpRequest, exc: Exception, payload: Payload | None) -> JsonResponse:
    """Answer 500 (Cloud Tasks retries), with the traceback in Django's error log, not the body.

    The task did not run: the fault came before it (a task module that fails to import, the
    database down when claiming) or from this package itself.
    """
    response = JsonResponse(
        {
            "status": "error",
            **({"task_id": payload.task_id} if payload else {}),
            "error": _class_name(exc),
            "reason": "the server failed before the task ran; Cloud Tasks will retry it",
        },
        status=500,
    )
    fields: dict[str, Any] = {"attempt": _attempt_number(request)}
    if payload is not None:
        fields = _fields(payload, fields["attempt"])
    # Where Django reports an uncaught exception: its request logger (mail_admins, the console)
    # and the signal error trackers listen to.
    log_message(
        request_logger,
        "Cloud Tasks execute view: %s before task %s ran",
        _class_name(exc),
        fields.get("task_path", "(unknown)"),
        status_code=500,
        request=request,
        exception=exc,
        **fields,
    )
    response._has_been_logged = True  # type: ignore[attr-defined]  # Django's own flag.
    got_request_exception.send(sender=None, request=request)
    return response


def _fields(payload: Payload, attempt: int | None) -> dict[str, Any]:
    return execution.log_fields(
        task_id=payload.task_id,
        task_path=payload.task_path,
        attempt=attempt,
        queue_name=payload.queue_name,
        backend=payload.backend,
    )


# With STORE_RESULTS, an attempt first claims the task in the store (which imports the models, so
# only then), keeps the claim's lease renewed while it runs (leases.py), and records the outcome
# after running it. See store.claim for the rules.


def _execute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    config = delivery.config
    claim = store.claim(delivery.payload, delivery.attempt, config.attempt_deadline, config.lease)
    if not isinstance(claim, execution.Claim):
        return _not_run(claim, delivery)
    return _answer(_run_claimed(delivery, claim), delivery.config)


def _run_claimed(delivery: _Delivery, claim: execution.Claim) -> execution.Outcome:
    from . import store

    with leases.held(store.held_lease(delivery.payload, claim, delivery.config)):
        result = execution.start(
            delivery.backend_class, delivery.task, delivery.payload, delivery.attempt, claim
        )
        outcome = execution.run(delivery.backend_class, result)
        store.record_finished(outcome.result, claim)
    return outcome


async def _aexecute_stored(delivery: _Delivery) -> JsonResponse:
    from . import store

    config = delivery.config
    claim = await store.aclaim(
        delivery.payload, delivery.attempt, config.attempt_deadline, config.lease
    )
    if not isinstance(claim, execution.Claim):
        return _not_run(claim, delivery)
    if not iscoroutinefunction(delivery.task.func):
        # Run and record in one thread hop, shielded: a sync task cannot be interrupted, so if
        # the client goes (its dispatch deadline), it still runs to its end and its outcome is
        # recorded; a retry then finds it done instead of running it again.
        run_claimed = sync_to_async(_run_claimed)
        outcome = await asyncio.shield(run_claimed(delivery, claim))
        return _answer(outcome, delivery.config)
    with leases.held(store.held_lease(delivery.payload, claim, config)):
        result = execution.start(
            delivery.backend_class, delivery.task, delivery.payload, delivery.attempt, claim
        )
        try:
            outcome = await execution.arun(delivery.backend_class, result)
        except asyncio.CancelledError:
            # Recorded as an interrupted attempt (see execution.arun); the cancellation goes on.
            await asyncio.shield(store.arecord_finished(result, claim))
            raise
        await store.arecord_finished(outcome.result, claim)
    return _answer(outcome, delivery.config)


def _not_run(verdict: AlreadySucceeded | StillRunning, delivery: _Delivery) -> JsonResponse:
    from .store import AlreadySucceeded

    if isinstance(verdict, AlreadySucceeded):
        # Cloud Tasks delivers at least once: acknowledge the copy, or it would retry it.
        return JsonResponse({"status": "success", "task_id": verdict.task_id, "duplicate": True})
    # 409, an ordinary failure: Cloud Tasks retries it with the queue's backoff, so a dead
    # attempt's task is taken over soon after its lease lapses. Not 429 or 503, the codes whose
    # Retry-After Cloud Tasks considers: they slow dispatch down for the whole queue
    # (docs/results.md, "Why 409"). Retry-After is for people and other callers.
    reason = "another attempt of this task is running; retry after its lease lapses"
    logger.info(
        "Task %s not run: %s",
        verdict.task_id,
        reason,
        extra=_fields(delivery.payload, delivery.attempt.number),
    )
    response = JsonResponse(
        {"status": "running", "task_id": verdict.task_id, "reason": reason}, status=409
    )
    response["Retry-After"] = str(verdict.retry_after)
    return response


def _answer(outcome: execution.Outcome, config: CloudTasksConfig) -> JsonResponse:
    """200 when the task succeeded or failed for good, 500 when a retry may fix it."""
    result = outcome.result
    if result.status == TaskResultStatus.SUCCESSFUL:
        return JsonResponse({"status": "success", "task_id": result.id})
    # The exception's class only: Cloud Tasks keeps response bodies in its logs, and a message can
    # carry anything. The log line has the whole traceback.
    assert outcome.exception is not None
    error = _class_name(outcome.exception)
    if config.response_error_messages:
        error = f"{error}: {outcome.exception}"
    if outcome.retry:
        return JsonResponse({"status": "error", "task_id": result.id, "error": error}, status=500)
    return JsonResponse({"status": "failed", "task_id": result.id, "error": error})


def _class_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _attempt(request: HttpRequest) -> execution.Attempt:
    number = _attempt_number(request)
    if number is None:
        retries = request.META[RETRY_COUNT_META]
        raise Refused(400, f"{RETRY_COUNT_HEADER} must be a whole number, not {retries[:20]!r}")
    return execution.Attempt(number=number, task_name=request.META.get(TASK_NAME_META))


def _attempt_number(request: HttpRequest) -> int | None:
    """X-CloudTasks-TaskRetryCount + 1; None if the header is not a whole number."""
    # META, not request.headers: building the headers mapping costs more than the rest of this.
    retries = request.META.get(RETRY_COUNT_META)
    if retries is None:
        return 1
    if not (retries.isdecimal() and len(retries) < 10):
        return None
    return int(retries) + 1
