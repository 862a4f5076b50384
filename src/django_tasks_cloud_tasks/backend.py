"""The enqueue side: ``task.enqueue()`` becomes a Cloud Tasks HTTP task for the execute view.

Each task is named after its result id (``NAMED_TASKS``, on by default), fixed before the first
attempt: Cloud Tasks refuses a second task of the same name, so retries (``client.py``), a bulk
enqueue's retried batches and the recovery of the outbox (``recovery.py``) cannot add it twice.
Result ids are random UUIDs, so names are spread evenly, as Cloud Tasks asks.

With ``ENQUEUE_ON_COMMIT``, an enqueue inside ``transaction.atomic()`` creates the task once the
transaction commits, and never after a rollback; with the result store, the READY row is written
inside the transaction, as the outbox that recovery works from should the process die in between.

The backend also checks its own configuration (``check``, collected by Django's tasks checks, and
``check_deployment``, collected by ``manage.py check --deploy``), as Django's backends do.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, DatabaseError, transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.utils import timezone

from . import client, config
from .attempts import CloudTask
from .exceptions import BulkEnqueueError, PayloadTooLarge
from .limits import MAX_BATCH_CREATE, QUEUE_ID
from .payload import MAX_BODY_BYTES, Payload

logger = logging.getLogger(__name__)

# Cloud Tasks refuses a schedule_time further ahead than this.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
# Room in the 1 MiB task limit for the URL, headers, token settings and message framing.
_TASK_OVERHEAD_BYTES = 4096
_JSON_HEADERS = {"Content-Type": "application/json"}
_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["Call", "CloudTasksBackend", "aenqueue_many", "enqueue_many"]


class Call:
    """One call of a task in a bulk enqueue: ``Call(*args, **kwargs)``."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Call(*{self.args!r}, **{self.kwargs!r})"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A task ready to be created: its result, its Cloud Tasks queue and the CreateTask request."""

    result: TaskResult[Any, Any]
    queue_id: str
    request: dict[str, Any]


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
        if not QUEUE_ID.fullmatch(queue_id):
            raise InvalidTask(
                f"Queue {queue_id!r} is not a valid Cloud Tasks queue id: use 1-100 letters, "
                "digits and hyphens."
            )
        if (
            task.run_after is not None
            and _aware(task.run_after) > datetime.now(UTC) + MAX_SCHEDULE_AHEAD
        ):
            raise InvalidTask(
                f"run_after {task.run_after.isoformat()} is more than 30 days ahead, "
                "which Cloud Tasks does not accept."
            )

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

    # --- one task ------------------------------------------------------------------------------

    def enqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        return self.enqueue_once(task, args, kwargs, result_id=None)

    def enqueue_once(
        self,
        task: Task[_P, _R],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        result_id: str | None,
    ) -> TaskResult[_P, _R]:
        """``enqueue()`` with the result id, and so the Cloud Task's name, fixed by the caller.

        Enqueuing the same id again adds no second task while Cloud Tasks keeps the name reserved
        (up to a day after the task ran): the schedule endpoint gives each cron slot one id so
        that Cloud Scheduler's repeated deliveries run it once. ``None`` is a fresh random id.
        Internal, as ``prepare`` is: users enqueue with ``Task.enqueue()``.
        """
        self.validate_task(task)
        prepared = self.prepare(task, args, kwargs, result_id=result_id)
        database = self._waits_for_commit()
        if database is not None:
            self._create_on_commit([prepared], database)
        else:
            name = client.create_task(
                self.config, prepared.queue_id, prepared.request, prepared.result.id
            )
            self._record(prepared.result, name)
            self._enqueued(prepared.result)
        return prepared.result

    async def aenqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        if self.config.enqueue_on_commit:
            # Transactions belong to the thread that runs the ORM; only there is it known
            # whether one is open.
            return await sync_to_async(self.enqueue)(task, args, kwargs)
        self.validate_task(task)
        prepared = self.prepare(task, args, kwargs)
        name = await client.acreate_task(
            self.config, prepared.queue_id, prepared.request, prepared.result.id
        )
        if self.config.store_results:
            await sync_to_async(self._record)(prepared.result, name)
        self._enqueued(prepared.result)
        return prepared.result

    # --- many calls of one task ----------------------------------------------------------------

    def enqueue_many(self, task: Task[_P, _R], calls: Iterable[Call]) -> list[TaskResult[_P, _R]]:
        """Enqueue every call of ``task`` in BatchCreateTasks calls of up to 100 tasks.

        Returns the results in the order of ``calls``; raises ``BulkEnqueueError`` naming the
        calls that were not added (or may not have been) if any.
        """
        self.validate_task(task)
        prepared = [self.prepare(task, list(c.args), dict(c.kwargs)) for c in calls]
        database = self._waits_for_commit()
        if database is not None:
            self._create_on_commit(prepared, database)
            return [p.result for p in prepared]
        return self._settle_batches(prepared, self._send_batches(prepared))

    async def aenqueue_many(
        self, task: Task[_P, _R], calls: Iterable[Call]
    ) -> list[TaskResult[_P, _R]]:
        if self.config.enqueue_on_commit:
            return await sync_to_async(self.enqueue_many)(task, calls)
        self.validate_task(task)
        prepared = [self.prepare(task, list(c.args), dict(c.kwargs)) for c in calls]
        batches = [
            (chunk, await client.abatch_create(self.config, chunk[0].queue_id, _requests(chunk)))
            for chunk in _chunks(prepared)
        ]
        if self.config.store_results:
            return await sync_to_async(self._settle_batches)(prepared, batches)
        return self._settle_batches(prepared, batches)

    def _send_batches(
        self, prepared: list[Prepared]
    ) -> list[tuple[list[Prepared], client.BatchOutcome]]:
        return [
            (chunk, client.batch_create(self.config, chunk[0].queue_id, _requests(chunk)))
            for chunk in _chunks(prepared)
        ]

    def _settle_batches(
        self,
        prepared: list[Prepared],
        batches: list[tuple[list[Prepared], client.BatchOutcome]],
    ) -> list[TaskResult[Any, Any]]:
        enqueued: list[TaskResult[Any, Any]] = []
        names: list[str] = []
        not_added: dict[int, str] = {}
        unknown: dict[int, str] = {}
        offset = 0
        for chunk, outcome in batches:
            for position, item in enumerate(chunk):
                index = offset + position
                if position in outcome.created:
                    enqueued.append(item.result)
                    names.append(outcome.created[position])
                elif position in outcome.refused:
                    not_added[index] = outcome.refused[position]
                else:
                    unknown[index] = outcome.unknown.get(position, "")
            offset += len(chunk)
        if self.config.store_results and enqueued:
            try:
                from . import store

                store.record_enqueued_many(enqueued, names)
            except DatabaseError:
                logger.exception(
                    "%d tasks were added to Cloud Tasks but their results could not be stored; "
                    "the first delivery of each writes its row.",
                    len(enqueued),
                )
        for result in enqueued:
            self._enqueued(result)
        results = [p.result for p in prepared]
        if not_added or unknown:
            queue = self.config.queue_path(prepared[0].queue_id)
            first = min([*not_added, *unknown])
            reason = not_added.get(first) or unknown[first]
            raise BulkEnqueueError(
                f"Bulk enqueue of {len(results)} calls to {queue}: {len(enqueued)} added, "
                f"{len(not_added)} not added, {len(unknown)} may have been added (the outcome is "
                f"unknown). The error's results, enqueued, not_added and unknown say which. "
                f"First failure, call {first}: {reason}",
                queue=queue,
                results=results,
                enqueued=enqueued,
                not_added=not_added,
                unknown=sorted(unknown),
            )
        return results

    # --- after the commit ----------------------------------------------------------------------

    def _waits_for_commit(self) -> str | None:
        """The database whose open transaction the enqueue waits for, if it should wait."""
        if not self.config.enqueue_on_commit:
            return None
        database = self.config.on_commit_database
        if database is None:
            if self.config.store_results:
                from django.db import router

                from .models import TaskRecord

                database = router.db_for_write(TaskRecord)
            else:
                database = DEFAULT_DB_ALIAS
        return database if transaction.get_connection(database).in_atomic_block else None

    def _create_on_commit(self, prepared: list[Prepared], database: str) -> None:
        if self.config.store_results:
            from . import store

            # Inside the transaction: the rows are the outbox, committed with the caller's data.
            if len(prepared) == 1:
                store.record_enqueued(prepared[0].result)
            else:
                store.record_enqueued_many([p.result for p in prepared], [""] * len(prepared))
        transaction.on_commit(lambda: self._create_committed(prepared), using=database)

    def _create_committed(self, prepared: list[Prepared]) -> None:
        """Create the tasks of a committed transaction; a failure is logged, never raised (the
        caller's data is committed), and the outbox keeps what recovery needs."""
        try:
            if len(prepared) == 1:
                (item,) = prepared
                name = client.create_task(self.config, item.queue_id, item.request, item.result.id)
                self._record(item.result, name, created=True)
                self._enqueued(item.result)
            else:
                self._settle_batches(prepared, self._send_batches(prepared))
        except Exception:
            ids = ", ".join(item.result.id for item in prepared)
            fix = (
                "Their READY rows stay in the result store: `manage.py cloudtasks_recover` "
                "creates the tasks."
                if self.config.store_results
                else "Without STORE_RESULTS nothing keeps them: enqueue them again."
            )
            logger.exception(
                "The transaction committed, but Cloud Tasks did not add (all of) its tasks %s. %s",
                ids,
                fix,
            )

    # --- shared --------------------------------------------------------------------------------

    def prepare(
        self,
        task: Task[_P, _R],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        result_id: str | None = None,
        enqueued_at: datetime | None = None,
        cloud_task_id: str | None = None,
    ) -> Prepared:
        """The result and the CreateTask request of one call; recovery passes the ``result_id``
        and ``enqueued_at`` of the row it creates a task for, and a ``cloud_task_id`` when the
        task's first name may still be taken (Cloud Tasks keeps a name for up to a day)."""
        payload = Payload(
            task_id=result_id or str(uuid.uuid4()),
            task_path=task.module_path,
            args=list(args),
            kwargs=dict(kwargs),
            queue_name=task.queue_name,
            backend=self.alias,
            priority=task.priority,
            takes_context=task.takes_context,
            enqueued_at=enqueued_at or timezone.now(),
        )
        body = payload.encode()
        if len(body) + _TASK_OVERHEAD_BYTES > MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"Task {task.module_path} is {len(body)} bytes once encoded; Cloud Tasks accepts "
                f"at most {MAX_BODY_BYTES - _TASK_OVERHEAD_BYTES}. Store large data elsewhere "
                "(a model, Cloud Storage) and pass its key instead."
            )
        queue_id = self.config.cloud_queue_for(task.queue_name, task.priority)
        queue_path = self.config.queue_path(queue_id)
        cloud_task = self._cloud_task(body, task.run_after)
        if self.config.named_tasks or result_id is not None:
            cloud_task["name"] = f"{queue_path}/tasks/{cloud_task_id or payload.task_id}"
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=payload.task_id,
            status=TaskResultStatus.READY,
            enqueued_at=payload.enqueued_at,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=payload.args,
            kwargs=payload.kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        return Prepared(result, queue_id, {"parent": queue_path, "task": cloud_task})

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
            cloud_task["schedule_time"] = _aware(run_after)
        if self.config.dispatch_deadline is not None:
            cloud_task["dispatch_deadline"] = self.config.dispatch_deadline
        return cloud_task

    def _record(self, result: TaskResult[Any, Any], name: str, *, created: bool = False) -> None:
        """Store the READY row of a task Cloud Tasks has (``created``: the outbox row exists).

        A failure is logged, not raised: the task will run, and its first delivery writes the
        row, so raising would only invite the caller to enqueue it twice.
        """
        if not self.config.store_results:
            return
        from . import store

        try:
            if created:
                store.record_created(result.id, name)
            else:
                store.record_enqueued(result, name)
        except DatabaseError:
            logger.exception(
                "Task %s was added to Cloud Tasks (%s) but its result could not be stored; its "
                "first delivery writes the row.",
                result.id,
                name,
            )

    def _enqueued(self, result: TaskResult[Any, Any]) -> None:
        task_enqueued.send(type(self), task_result=result)

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


def _aware(moment: datetime) -> datetime:
    # A naive run_after (USE_TZ = False) is local time, as everywhere else in Django.
    return moment if moment.tzinfo else moment.astimezone()


def _chunks(prepared: list[Prepared]) -> list[list[Prepared]]:
    return [
        prepared[start : start + MAX_BATCH_CREATE]
        for start in range(0, len(prepared), MAX_BATCH_CREATE)
    ]


def _requests(chunk: list[Prepared]) -> list[dict[str, Any]]:
    return [item.request for item in chunk]


def enqueue_many[**P, R](task: Task[P, R], calls: Iterable[Call]) -> list[TaskResult[P, R]]:
    """Enqueue many calls of ``task`` at once; the results come back in the order of ``calls``.

    With a ``CloudTasksBackend`` the tasks are created 100 per BatchCreateTasks call; with any
    other backend (say, Django's ``ImmediateBackend`` in tests) each call is enqueued in turn.
    """
    backend = task.get_backend()
    if isinstance(backend, CloudTasksBackend):
        return backend.enqueue_many(task, calls)
    return [task.enqueue(*call.args, **call.kwargs) for call in calls]


async def aenqueue_many[**P, R](task: Task[P, R], calls: Iterable[Call]) -> list[TaskResult[P, R]]:
    """``enqueue_many`` for async code."""
    backend = task.get_backend()
    if isinstance(backend, CloudTasksBackend):
        return await backend.aenqueue_many(task, calls)
    return [await task.aenqueue(*call.args, **call.kwargs) for call in calls]
