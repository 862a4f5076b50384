"""The checks that no single backend can make on its own.

`check --deploy` asks each Cloud Tasks backend whether its execute view would refuse every task or
be open (``CloudTasksBackend.check_deployment``): Django has no deployment hook for backends. And
schedule names must be unique across backends, since each becomes one Cloud Scheduler job.

Every other check lives on the backend (``CloudTasksBackend.check``), which Django's tasks checks
collect.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.tasks import task_backends

from .backend import CloudTasksBackend


@checks.register(checks.Tags.security, deploy=True)
def check_execute_view_authentication(**kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for backend in _backends():
        messages.extend(backend.check_deployment())
    return messages


@checks.register()
def check_schedule_names(**kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    seen: dict[str, str] = {}
    for backend in _backends():
        for schedule in backend.config.schedules:
            other = seen.setdefault(schedule.name, backend.alias)
            if other != backend.alias:
                messages.append(
                    checks.Error(
                        f"TASKS[{backend.alias!r}]['OPTIONS']['SCHEDULES'][{schedule.name!r}] has "
                        f"the same name as a schedule of TASKS[{other!r}]: both would be one "
                        "Cloud Scheduler job.",
                        hint="Rename one of them.",
                        id="django_tasks_cloud_tasks.E004",
                    )
                )
    return messages


def _backends() -> list[CloudTasksBackend]:
    """The project's Cloud Tasks backends whose configuration is valid.

    An invalid one is reported by its own check (``CloudTasksBackend.check``, or Django's).
    """
    found = []
    for alias in task_backends.settings:
        try:
            backend = task_backends[alias]
            if isinstance(backend, CloudTasksBackend):
                backend.config  # noqa: B018  (raises ImproperlyConfigured if invalid)
                found.append(backend)
        except ImproperlyConfigured:
            continue
    return found
