"""System checks: `check --deploy` says when the execute view would refuse every task or be open."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.tasks import Task, task_backends
from django.tasks.exceptions import InvalidTask
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from .backend import CloudTasksBackend
from .declarations import ScheduleDeclaration


@checks.register(checks.Tags.security, deploy=True)
def check_execute_view_authentication(**kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias, backend in _backends():
        config = backend.config
        if config.oidc_service_account_email:
            continue
        if config.allow_unauthenticated:
            messages.append(
                checks.Warning(
                    f"TASKS[{alias!r}] sets ALLOW_UNAUTHENTICATED: anyone who can reach "
                    f"{config.handler_path} can run this project's tasks.",
                    hint="Keep it only where the platform authenticates callers (Cloud Run "
                    "without --allow-unauthenticated, roles/run.invoker granted narrowly); "
                    "otherwise set OIDC_SERVICE_ACCOUNT_EMAIL.",
                    id="django_tasks_cloud_tasks.W002",
                )
            )
        else:
            messages.append(
                checks.Warning(
                    f"TASKS[{alias!r}] has no OIDC_SERVICE_ACCOUNT_EMAIL, so with DEBUG off its "
                    "execute view refuses every task (403).",
                    hint="Set OIDC_SERVICE_ACCOUNT_EMAIL to the service account Cloud Tasks signs "
                    "tokens as (auto-detected on Cloud Run and App Engine), or "
                    "ALLOW_UNAUTHENTICATED: True if only authorised callers can reach the view.",
                    id="django_tasks_cloud_tasks.W001",
                )
            )
    return messages


@checks.register(checks.Tags.urls)
def check_handler_path_routes_to_the_view(**kwargs: Any) -> list[checks.CheckMessage]:
    from .views import aexecute, execute

    messages: list[checks.CheckMessage] = []
    for alias, backend in _backends():
        path = backend.config.handler_path
        try:
            routed = resolve(path).func in (execute, aexecute)
        except Resolver404:
            routed = False
        if not routed:
            messages.append(
                checks.Error(
                    f"TASKS[{alias!r}] sends tasks to {path}, which does not route to the "
                    "Cloud Tasks execute view.",
                    hint="Add path('cloudtasks/', include('django_tasks_cloud_tasks.urls')) to "
                    f"{settings.ROOT_URLCONF}, or set TASK_HANDLER_PATH to where you mounted it.",
                    id="django_tasks_cloud_tasks.E001",
                )
            )
    return messages


@checks.register(checks.Tags.urls)
def check_schedules(**kwargs: Any) -> list[checks.CheckMessage]:
    """Each schedule names a Task its backend accepts, and Scheduler can reach the endpoint."""
    from .periodic import enqueue_scheduled

    messages: list[checks.CheckMessage] = []
    seen: dict[str, str] = {}
    for alias, backend in _backends():
        config = backend.config
        if config.schedules:
            try:
                routed_ok = resolve(f"{config.schedule_handler_path}x/").func is enqueue_scheduled
            except Resolver404:
                routed_ok = False
            if not routed_ok:
                messages.append(
                    checks.Error(
                        f"TASKS[{alias!r}] declares SCHEDULES, but "
                        f"{config.schedule_handler_path}<name>/ does not route to the schedule "
                        "endpoint.",
                        hint="Add path('cloudtasks/', include('django_tasks_cloud_tasks.urls')) "
                        "to the URLconf, or set SCHEDULE_HANDLER_PATH to where you mounted it.",
                        id="django_tasks_cloud_tasks.E002",
                    )
                )
        for schedule in config.schedules:
            where = f"TASKS[{alias!r}]['OPTIONS']['SCHEDULES'][{schedule.name!r}]"
            problem = _schedule_problem(alias, schedule)
            if schedule.name in seen:
                problem = (
                    f"has the same name as a schedule of TASKS[{seen[schedule.name]!r}]: both "
                    "would be one Cloud Scheduler job"
                )
            seen.setdefault(schedule.name, alias)
            if problem:
                messages.append(
                    checks.Error(
                        f"{where} {problem}.",
                        hint="Fix the entry; schedules are declared in the backend's OPTIONS.",
                        id="django_tasks_cloud_tasks.E003",
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


def _backends() -> list[tuple[str, CloudTasksBackend]]:
    found = []
    for alias in task_backends.settings:
        try:
            backend = task_backends[alias]
        except ImproperlyConfigured:
            continue  # Django's own tasks check reports it.
        if isinstance(backend, CloudTasksBackend):
            found.append((alias, backend))
    return found
