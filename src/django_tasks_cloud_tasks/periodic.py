"""The schedule endpoint: Cloud Scheduler POSTs here when a declared periodic task is due, and the
task is enqueued through Cloud Tasks.

Why not let Scheduler POST the task straight to the execute view: a Scheduler job's body is fixed
when the job is synced, so every run would carry the same task id (the result store would take
the second run for a duplicate delivery and skip it); Scheduler retries at most 5 times and
knows nothing of the queue's rate limits; and the arguments would live in Google Cloud rather than
in the deployed settings. Enqueuing here gives each run an id of its own, the queue's rate
limits and retry policy, and a stored result, and only the schedule's name travels in the
request, so a caller can run only what SCHEDULES declares.

Cloud Scheduler delivers at least once, so a cron slot may arrive twice. Each slot (the
schedule and its ``X-CloudScheduler-ScheduleTime``) gets one result id, which names its Cloud
Task: a repeated delivery finds the slot's row in the result store and is answered as a duplicate,
or, without the store, its CreateTask finds the name taken and adds nothing. A request without the
header (``RunJob``, a person) is a run of its own.

Authentication is the execute view's (``auth.py``), fail-closed: Scheduler signs an ID token as
``OIDC_SERVICE_ACCOUNT_EMAIL`` for ``OIDC_AUDIENCE``. Answers: 200 enqueued (or a duplicate of a
slot already enqueued), 401/403 refused, 404 no such schedule for the backends the caller may use,
405 not a POST, 503 the enqueue failed (Scheduler counts the run as failed, and retries it if the
job's retry_config says so; the retry carries the same slot, so it cannot add a second task).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core import checks
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.tasks import Task, TaskResult
from django.tasks.exceptions import InvalidTask
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import tracing
from .auth import authenticate, cloud_tasks_backends
from .config import CloudTasksConfig
from .declarations import ScheduleDeclaration
from .exceptions import Refused

logger = logging.getLogger(__name__)


# Any fixed UUID: result ids of cron slots are derived from it (uuid5), so they are the same in
# every process and release, and as well spread as Cloud Tasks asks task names to be.
_SLOT_NAMESPACE = uuid.UUID("5b1c2f0e-8a4d-5e0b-9c1e-6f3a7d2b9e41")


@csrf_exempt
@require_POST
# Its enqueue must not wait for a request-wide transaction (ATOMIC_REQUESTS) to commit.
@transaction.non_atomic_requests
@tracing.traced_request  # The task carries the scheduler request's trace, as the middleware does.
def enqueue_scheduled(request: HttpRequest, name: str) -> JsonResponse:
    """Enqueue the task of schedule ``name`` with its declared arguments."""
    backends = cloud_tasks_backends()
    try:
        allowed = authenticate(request, backends.policy)
    except Refused as exc:
        logger.warning("Refused a schedule request (%s): %s", exc.status, exc.reason)
        return JsonResponse({"status": "refused", "reason": exc.reason}, status=exc.status)
    found = [
        (alias, schedule)
        for alias in sorted(allowed)
        for schedule in backends.by_alias[alias].config.schedules
        if schedule.name == name
    ]
    if not found:
        return JsonResponse(
            {"status": "refused", "reason": f"no schedule {name!r} in SCHEDULES"}, status=404
        )
    alias, schedule = found[0]
    backend = backends.by_alias[alias]
    slot = request.headers.get("X-CloudScheduler-ScheduleTime")
    result_id = None if slot is None else _slot_result_id(alias, name, slot)
    if result_id is not None and _already_enqueued(backend.config, result_id):
        logger.info("Schedule %r: the run of %s was enqueued already (%s)", name, slot, result_id)
        return JsonResponse({"status": "duplicate", "schedule": name, "task_id": result_id})
    try:
        task = import_string(schedule.task).using(
            backend=alias,
            **{
                key: value
                for key, value in (
                    ("queue_name", schedule.queue_name),
                    ("priority", schedule.priority),
                )
                if value is not None
            },
        )
        result: TaskResult[Any, Any] = backend.enqueue_once(
            task, schedule.args, dict(schedule.kwargs), result_id=result_id
        )
    except Exception as exc:
        # A task path the system check would have caught, or Cloud Tasks refusing: either way
        # the run did not happen, and Scheduler should see it fail.
        logger.exception("Schedule %r could not enqueue %s", name, schedule.task)
        return JsonResponse(
            {"status": "error", "schedule": name, "error": type(exc).__name__}, status=503
        )
    logger.info(
        "Schedule %r enqueued %s as %s (scheduled for %s)",
        name,
        schedule.task,
        result.id,
        slot or "now",
    )
    return JsonResponse({"status": "enqueued", "schedule": name, "task_id": result.id})


def _slot_result_id(alias: str, name: str, slot: str) -> str:
    """The result id of one cron slot of a schedule: the same for every delivery of the slot.

    The header is used as sent, not parsed: every delivery of a slot carries the same text, and
    its exact format is Cloud Scheduler's to choose.
    """
    return str(uuid.uuid5(_SLOT_NAMESPACE, f"{alias}\n{name}\n{slot}"))


def _already_enqueued(config: CloudTasksConfig, result_id: str) -> bool:
    if not config.store_results:
        return False  # Cloud Tasks refuses the taken name instead (enqueue_once).
    from django.db import router

    from .models import TaskRecord

    # Where enqueue writes: a replica may not have the row yet.
    database = router.db_for_write(TaskRecord)
    return TaskRecord.objects.using(database).filter(pk=result_id).exists()


def check_schedules(alias: str, config: CloudTasksConfig) -> list[checks.CheckMessage]:
    """A backend's check of its SCHEDULES: each names a Task it accepts, and Scheduler can reach
    the endpoint (``CloudTasksBackend.check``)."""
    if not config.schedules:
        return []
    messages: list[checks.CheckMessage] = []
    try:
        routed = resolve(f"{config.schedule_handler_path}x/").func is enqueue_scheduled
    except Resolver404:
        routed = False
    if not routed:
        messages.append(
            checks.Error(
                f"TASKS[{alias!r}] declares SCHEDULES, but {config.schedule_handler_path}<name>/ "
                "does not route to the schedule endpoint.",
                hint="Add path('cloudtasks/', include('django_tasks_cloud_tasks.urls')) to the "
                "URLconf, or set SCHEDULE_HANDLER_PATH to where you mounted it.",
                id="django_tasks_cloud_tasks.E003",
            )
        )
    for schedule in config.schedules:
        problem = _schedule_problem(alias, schedule)
        if problem:
            messages.append(
                checks.Error(
                    f"TASKS[{alias!r}]['OPTIONS']['SCHEDULES'][{schedule.name!r}] {problem}.",
                    hint="Fix the entry; schedules are declared in the backend's OPTIONS.",
                    id="django_tasks_cloud_tasks.E004",
                )
            )
    return messages


def _schedule_problem(alias: str, schedule: ScheduleDeclaration) -> str | None:
    try:
        task = import_string(schedule.task)
    except ImportError as exc:
        return f"names task {schedule.task!r}, which cannot be imported ({exc})"
    if not isinstance(task, Task):
        return f"names {schedule.task!r}, which is not a Task (decorate it with @task)"
    changes: dict[str, Any] = {"backend": alias}
    if schedule.queue_name is not None:
        changes["queue_name"] = schedule.queue_name
    if schedule.priority is not None:
        changes["priority"] = schedule.priority
    try:
        task.using(**changes)
    except InvalidTask as exc:
        return f"cannot run on this backend: {exc}"
    return None
