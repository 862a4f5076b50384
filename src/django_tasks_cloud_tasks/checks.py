"""`check --deploy` asks each Cloud Tasks backend whether its execute view would refuse every task
or be open (``CloudTasksBackend.check_deployment``).

Every other check lives on the backend (``CloudTasksBackend.check``), which Django's tasks checks
collect; Django has no deployment hook for backends, hence this one.
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
    for alias in task_backends.settings:
        try:
            backend = task_backends[alias]
            if isinstance(backend, CloudTasksBackend):
                messages.extend(backend.check_deployment())
        except ImproperlyConfigured:
            continue  # The tasks checks report it (CloudTasksBackend.check, or Django's own).
    return messages
