"""The execute view: Cloud Tasks POSTs a task here, and the answer tells it whether to retry.

HTTP in, HTTP out: authentication, payload parsing, task resolution and execution each live in
their own module. Bad requests get a 4xx with a reason and never run anything; only a task that
raised answers 500, which makes Cloud Tasks retry it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.tasks import Task, task_backends
from django.tasks.exceptions import InvalidTask
from django.views.decorators.csrf import csrf_exempt

from . import execution
from .auth import Refused, authenticate
from .backend import CloudTasksBackend
from .payload import MAX_BODY_BYTES, InvalidPayload, Payload, decode
from .resolution import resolve_task

logger = logging.getLogger(__name__)

RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"
TASK_NAME_HEADER = "X-CloudTasks-TaskName"


def _refuse(status: int, reason: str, task_id: str | None = None) -> JsonResponse:
    logger.warning("Refused a task request (%s): %s", status, reason)
    body = {"status": "refused", "reason": reason}
    if task_id:
        body["task_id"] = task_id
    return JsonResponse(body, status=status)


@csrf_exempt
async def execute(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        response = _refuse(405, f"method {request.method} is not allowed; Cloud Tasks POSTs")
        response["Allow"] = "POST"
        return response
    if _declared_length(request) > MAX_BODY_BYTES:
        return _refuse(413, f"body is larger than Cloud Tasks' {MAX_BODY_BYTES} byte task limit")

    backends = _cloud_tasks_backends()
    try:
        allowed = authenticate(request, backends)
        payload = decode(request.body)
    except Refused as refusal:
        return _refuse(refusal.status, refusal.reason)
    except InvalidPayload as exc:
        return _refuse(400, str(exc))

    if payload.backend not in allowed:
        return _refuse(
            403 if payload.backend in backends else 400,
            f"backend {payload.backend!r} is not a CloudTasksBackend this request may use",
            payload.task_id,
        )
    backend = backends[payload.backend]
    try:
        attempt = _attempt(request)
        task = _task(payload.task_path).using(
            backend=payload.backend, queue_name=payload.queue_name, priority=payload.priority
        )
        _check_arguments(task, payload)
    except (InvalidTask, ValueError) as exc:
        return _refuse(400, str(exc), payload.task_id)
    except LookupError as exc:
        return _refuse(404, str(exc), payload.task_id)

    result = execution.start(type(backend), task, payload, attempt)
    await execution.arun(type(backend), result)
    if result.errors:
        error = result.errors[-1].traceback.rstrip().rpartition("\n")[2]
        return JsonResponse({"status": "error", "task_id": result.id, "error": error}, status=500)
    return JsonResponse({"status": "success", "task_id": result.id})


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _cloud_tasks_backends() -> dict[str, CloudTasksBackend]:
    return {
        alias: backend
        for alias in task_backends.settings
        if isinstance(backend := task_backends[alias], CloudTasksBackend)
    }


def _attempt(request: HttpRequest) -> execution.Attempt:
    retries = request.headers.get(RETRY_COUNT_HEADER)
    if retries is None:
        return execution.Attempt(number=1, task_name=request.headers.get(TASK_NAME_HEADER))
    if not (retries.isdecimal() and len(retries) < 10):
        raise ValueError(f"{RETRY_COUNT_HEADER} must be a whole number, not {retries[:20]!r}")
    return execution.Attempt(
        number=int(retries) + 1, task_name=request.headers.get(TASK_NAME_HEADER)
    )


def _check_arguments(task: Task[..., Any], payload: Payload) -> None:
    # A call that cannot bind would fail on every retry: refuse it as bad input instead.
    args = [None, *payload.args] if task.takes_context else payload.args
    try:
        inspect.signature(task.func).bind(*args, **payload.kwargs)
    except TypeError as exc:
        raise ValueError(f"{payload.task_path} does not accept these arguments: {exc}") from None


def _task(task_path: str) -> Task[..., Any]:
    task = resolve_task(task_path)
    if task is None:
        raise LookupError(f"{task_path!r} is not a django.tasks.Task of this project")
    return task
