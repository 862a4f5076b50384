"""The demo page, the endpoint its forms post to, and the feed of recent tasks it polls."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, cast

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render
from django.tasks import TaskResult, TaskResultStatus, default_task_backend
from django.tasks.exceptions import InvalidTask
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from django_tasks_cloud_tasks import CloudTasksBackend, CloudTasksError
from django_tasks_cloud_tasks.models import TaskRecord

from . import tasks
from .queues import RETRIES_POLICY, UNKNOWN, QueueLookup, ensure_queue

RECENT_TASKS = 20
MAX_DELAY_SECONDS = 3600


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/index.html", {"cloud_tasks": _backend().config})


@require_POST
def enqueue(request: HttpRequest, kind: str) -> JsonResponse:
    enqueuer = ENQUEUERS.get(kind)
    if enqueuer is None:
        return JsonResponse({"error": f"Unknown task kind {kind!r}."}, status=404)
    try:
        result = enqueuer(request.POST)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except CloudTasksError as exc:
        # Usually the emulator is not running; its message says how to start it.
        return JsonResponse({"error": str(exc)}, status=503)
    run_after = result.task.run_after
    return JsonResponse(
        {
            "id": result.id,
            "task": result.task.name,
            "queue": result.task.queue_name,
            "run_after": run_after.isoformat() if run_after else None,
        }
    )


@require_GET
def recent_tasks(request: HttpRequest) -> JsonResponse:
    config = _backend().config
    lookup = QueueLookup(config)
    records = TaskRecord.objects.order_by("-enqueued_at")[:RECENT_TASKS]
    return JsonResponse(
        {"tasks": [_describe(r, result, lookup) for r, result in _results(records)]}
    )


def _backend() -> CloudTasksBackend:
    return cast(CloudTasksBackend, default_task_backend)


def _results(
    records: Iterable[TaskRecord],
) -> Iterator[tuple[TaskRecord, TaskResult[..., Any]]]:
    for record in records:
        try:
            yield record, record.to_task_result()
        except InvalidTask:
            # Its task was since removed from demo/tasks.py: nothing left to show it with.
            continue


def _describe(
    record: TaskRecord, result: TaskResult[..., Any], lookup: QueueLookup
) -> dict[str, Any]:
    status = result.status
    succeeded = status == TaskResultStatus.SUCCESSFUL
    queue_id = _backend().config.cloud_queue_for(result.task.queue_name, result.task.priority)
    # What the queue will still do: only asked of tasks not finished for good.
    in_queue = UNKNOWN if succeeded else lookup.in_queue(record.cloud_task_name)
    next_at = in_queue.next_attempt_at
    return {
        "id": result.id,
        "task": result.task.name,
        "queue": result.task.queue_name,
        "priority": result.task.priority,
        "status": status,
        "state": _state(status, in_queue.held),
        "attempts": result.attempts,
        "max_attempts": None if succeeded else lookup.max_attempts(queue_id),
        "next_attempt_at": next_at.isoformat() if in_queue.held and next_at else None,
        "return_value": result.return_value if succeeded else None,
        "error": _last_line(result.errors[-1].traceback) if result.errors else None,
        "enqueued_at": result.enqueued_at.isoformat() if result.enqueued_at else None,
    }


def _state(status: TaskResultStatus, held: bool | None) -> str:
    """What the page shows: the store's status, corrected by what the queue will still do."""
    if held is None or status == TaskResultStatus.SUCCESSFUL:
        return str(status)
    if status == TaskResultStatus.FAILED:
        # Failed so far; the queue retries it, or has given up on it.
        return "RETRYING" if held else "FAILED"
    # READY or RUNNING, yet the queue has forgotten it: an emulator restarted without its state.
    return str(status) if held else "LOST"


def _last_line(traceback: str) -> str:
    # The exception itself, e.g. "RuntimeError: This task fails on purpose".
    return traceback.rstrip().rpartition("\n")[2]


def _number(data: QueryDict, field: str) -> int | float:
    return _parse_number(data.get(field, "").strip(), field)


def _numbers(data: QueryDict, field: str) -> list[int | float]:
    parts = data.get(field, "").replace(",", " ").split()
    if not parts:
        raise ValueError(f"{field} needs at least one number.")
    return [_parse_number(part, field) for part in parts]


def _parse_number(text: str, field: str) -> int | float:
    # Integers stay integers, so 5 + 3 shows as 8 rather than 8.0.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise ValueError(f"{field}: {text!r} is not a finite number.")
    return value


def _text(data: QueryDict, field: str) -> str:
    text = data.get(field, "").strip()
    if not text:
        raise ValueError(f"{field} must not be empty.")
    return text


def _delayed(data: QueryDict) -> TaskResult[..., Any]:
    delay = _number(data, "delay")
    if not 0 < delay <= MAX_DELAY_SECONDS:
        raise ValueError(f"delay must be between 0 and {MAX_DELAY_SECONDS} seconds.")
    run_after = timezone.now() + timedelta(seconds=delay)
    return tasks.delayed_greeting.using(run_after=run_after).enqueue(_text(data, "name"))


def _failing(data: QueryDict) -> TaskResult[..., Any]:
    ensure_queue(_backend().config, tasks.always_fails.queue_name, RETRIES_POLICY)
    return tasks.always_fails.enqueue()


ENQUEUERS: dict[str, Callable[[QueryDict], TaskResult[..., Any]]] = {
    "add": lambda data: tasks.add_numbers.enqueue(_number(data, "a"), _number(data, "b")),
    "notify": lambda data: tasks.send_notification.enqueue(_text(data, "message")),
    "process": lambda data: tasks.process_data.enqueue(_numbers(data, "numbers")),
    "urgent": lambda data: tasks.urgent_alert.enqueue(_text(data, "message")),
    "context": lambda data: tasks.report_context.enqueue(_text(data, "message")),
    "fail": _failing,
    "delayed": _delayed,
}
