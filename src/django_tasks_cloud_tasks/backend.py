"""The enqueue side: ``task.enqueue()`` becomes a Cloud Tasks HTTP task for the execute view.

The backend also checks its own configuration (``check``, collected by Django's tasks checks, and
``check_deployment``, collected by ``manage.py check --deploy``), as Django's backends do.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.utils import timezone

from . import client, config
from .attempts import CloudTask
from .exceptions import PayloadTooLarge
from .payload import MAX_BODY_BYTES, Payload

# Cloud Tasks refuses a schedule_time further ahead than this.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
# Room in the 1 MiB task limit for the URL, headers, token settings and message framing.
_TASK_OVERHEAD_BYTES = 4096
_QUEUE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_JSON_HEADERS = {"Content-Type": "application/json"}
_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["CloudTasksBackend"]


class CloudTasksBackend(BaseTaskBackend):
    """Runs tasks through Google Cloud Tasks, which POSTs each one back to the execute view.

    With ``STORE_RESULTS`` on, results are written to and read from the result store, which is
    imported only then: it imports the models, which need the app registry and a database.
    """

    task_class = CloudTask  # Takes max_attempts: @task(max_attempts=3) on Django 6.1.
    supports_defer = True
    supports_async_task = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self._config: config.CloudTasksConfig | None = None
        self._config_error: ImproperlyConfigured | None = None
        try:
            self._config = config.resolve(alias, self.options)
        except ImproperlyConfigured as exc:
            # Raised again on first use; `check` reports it as a message rather than a traceback.
            self._config_error = exc
        self.supports_get_result = self._config is not None and self._config.store_results

    @property
    def config(self) -> config.CloudTasksConfig:
        """The validated configuration; ``ImproperlyConfigured`` says what to fix if it is not."""
        if self._config is None:
            assert self._config_error is not None
            raise ImproperlyConfigured(*self._config_error.args) from self._config_error.__cause__
        return self._config

    def validate_task(self, task: Task[..., Any]) -> None:
        super().validate_task(task)
        queue_id = self.config.cloud_queue_for(task.queue_name, task.priority)
        if not _QUEUE_ID.fullmatch(queue_id):
            raise InvalidTask(
                f"Queue {queue_id!r} is not a valid Cloud Tasks queue id: use 1-100 letters, "
                "digits and hyphens."
            )
        if task.run_after is not None and task.run_after > timezone.now() + MAX_SCHEDULE_AHEAD:
            raise InvalidTask(
                f"run_after {task.run_after.isoformat()} is more than 30 days ahead, "
                "which Cloud Tasks does not accept."
            )

    def enqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        self.validate_task(task)
        result, queue_id, request = self._prepare(task, args, kwargs)
        cloud_task = client.create_task(self.config, queue_id, request)
        if self.config.store_results:
            from . import store

            store.record_enqueued(result, cloud_task.name)
        return self._enqueued(result)

    async def aenqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        self.validate_task(task)
        result, queue_id, request = self._prepare(task, args, kwargs)
        cloud_task = await client.acreate_task(self.config, queue_id, request)
        if self.config.store_results:
            from . import store

            await store.arecord_enqueued(result, cloud_task.name)
        return self._enqueued(result)

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        if not self.config.store_results:
            return super().get_result(result_id)  # NotImplementedError, as Django documents.
        from . import store

        return store.get_result(self.alias, result_id)

    async def aget_result(self, result_id: str) -> TaskResult[..., Any]:
        if not self.config.store_results:
            return super().get_result(result_id)
        from . import store

        return await store.aget_result(self.alias, result_id)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Configuration problems, as check messages with ids and hints."""
        messages = list(super().check(**kwargs))
        if self._config_error is not None:
            return [
                *messages,
                checks.Error(
                    str(self._config_error),
                    hint="Fix this backend's OPTIONS or environment as the message says; "
                    "docs/configuration.md lists every option.",
                    id="django_tasks_cloud_tasks.E002",
                ),
            ]
        from .periodic import check_schedules

        return [
            *messages,
            *self._check_handler_path(),
            *check_schedules(self.alias, self.config),
        ]

    def check_deployment(self) -> list[checks.CheckMessage]:
        """For `check --deploy`: whether the execute view would refuse every task, or is open."""
        config = self.config
        if config.oidc_service_account_email:
            return []
        if config.allow_unauthenticated:
            return [
                checks.Warning(
                    f"TASKS[{self.alias!r}] sets ALLOW_UNAUTHENTICATED: anyone who can reach "
                    f"{config.handler_path} can run this project's tasks.",
                    hint="Keep it only where the platform authenticates callers (Cloud Run "
                    "without --allow-unauthenticated, roles/run.invoker granted narrowly); "
                    "otherwise set OIDC_SERVICE_ACCOUNT_EMAIL.",
                    id="django_tasks_cloud_tasks.W002",
                )
            ]
        return [
            checks.Warning(
                f"TASKS[{self.alias!r}] has no OIDC_SERVICE_ACCOUNT_EMAIL, so with DEBUG off its "
                "execute view refuses every task (403).",
                hint="Set OIDC_SERVICE_ACCOUNT_EMAIL to the service account Cloud Tasks signs "
                "tokens as (auto-detected on Cloud Run and App Engine), or "
                "ALLOW_UNAUTHENTICATED: True if only authorised callers can reach the view.",
                id="django_tasks_cloud_tasks.W001",
            )
        ]

    def _check_handler_path(self) -> list[checks.CheckMessage]:
        from django.urls import Resolver404, resolve

        from .views import aexecute, execute

        path = self.config.handler_path
        try:
            routed = resolve(path).func in (execute, aexecute)
        except Resolver404:
            routed = False
        if routed:
            return []
        return [
            checks.Error(
                f"TASKS[{self.alias!r}] sends tasks to {path}, which does not route to the "
                "Cloud Tasks execute view.",
                hint="Add path('cloudtasks/', include('django_tasks_cloud_tasks.urls')) to "
                f"{settings.ROOT_URLCONF}, or set TASK_HANDLER_PATH to where you mounted it.",
                id="django_tasks_cloud_tasks.E001",
            )
        ]

    def _prepare(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[TaskResult[_P, _R], str, dict[str, Any]]:
        enqueued_at = timezone.now()
        payload = Payload(
            task_id=str(uuid.uuid4()),
            task_path=task.module_path,
            args=list(args),
            kwargs=dict(kwargs),
            queue_name=task.queue_name,
            backend=self.alias,
            priority=task.priority,
            takes_context=task.takes_context,
            enqueued_at=enqueued_at,
        )
        body = payload.encode()
        if len(body) + _TASK_OVERHEAD_BYTES > MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"Task {task.module_path} is {len(body)} bytes once encoded; Cloud Tasks accepts "
                f"at most {MAX_BODY_BYTES - _TASK_OVERHEAD_BYTES}. Store large data elsewhere "
                "(a model, Cloud Storage) and pass its key instead."
            )
        queue_id = self.config.cloud_queue_for(task.queue_name, task.priority)
        request = {
            "parent": self.config.queue_path(queue_id),
            "task": self._cloud_task(body, task.run_after),
        }
        result: TaskResult[_P, _R] = TaskResult(
            task=task,
            id=payload.task_id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=payload.args,
            kwargs=payload.kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        return result, queue_id, request

    def _cloud_task(self, body: bytes, run_after: datetime | None) -> dict[str, Any]:
        http_request: dict[str, Any] = {
            "url": self.config.handler_url,
            "headers": _JSON_HEADERS,
            "body": body,
        }
        if self.config.oidc_service_account_email:
            http_request["oidc_token"] = {
                "service_account_email": self.config.oidc_service_account_email,
                "audience": self.config.oidc_audience,
            }
        cloud_task: dict[str, Any] = {"http_request": http_request}
        if run_after is not None:
            # A naive run_after (USE_TZ = False) is local time, as everywhere else in Django.
            cloud_task["schedule_time"] = run_after if run_after.tzinfo else run_after.astimezone()
        if self.config.dispatch_deadline is not None:
            cloud_task["dispatch_deadline"] = self.config.dispatch_deadline
        return cloud_task

    def _enqueued(self, result: TaskResult[_P, _R]) -> TaskResult[_P, _R]:
        task_enqueued.send(type(self), task_result=result)
        return result
