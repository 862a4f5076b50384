"""The schedule endpoint: Cloud Scheduler POSTs here when a declared periodic task is due, and the
task is enqueued through Cloud Tasks.

Why not let Scheduler POST the task straight to the execute view: a Scheduler job's body is fixed
when the job is synced, so every run would carry the same task id (the result store would take
the second run for a duplicate delivery and skip it); Scheduler retries at most 5 times and
knows nothing of the queue's rate limits; and the arguments would live in Google Cloud rather than
in the deployed settings. Enqueuing here gives each run a fresh id, the queue's rate limits and
retry policy, and a stored result, and only the schedule's name travels in the request, so a
caller can run only what SCHEDULES declares.

Authentication is the execute view's (``auth.py``), fail-closed: Scheduler signs an ID token as
``OIDC_SERVICE_ACCOUNT_EMAIL`` for ``OIDC_AUDIENCE``. Answers: 200 enqueued, 401/403 refused,
404 no such schedule for the backends the caller may use, 405 not a POST, 503 the enqueue failed
(Scheduler counts the run as failed, and retries it if the job's retry_config says so).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core import checks
from django.http import HttpRequest, JsonResponse
from django.tasks import Task
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


@csrf_exempt
@require_POST
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
        result = task.enqueue(*schedule.args, **schedule.kwargs)
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
        request.headers.get("X-CloudScheduler-ScheduleTime", "now"),
    )
    return JsonResponse({"status": "enqueued", "schedule": name, "task_id": result.id})


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
