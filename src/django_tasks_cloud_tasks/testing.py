"""Testing helpers for projects that use this backend: the real path, in a few lines.

A test enqueues as the project does; the in-process emulator (real gRPC) delivers the task to a
live Django server, which runs it through the execute view. Nothing is mocked, so what passes here
is what production does. The same harness serves pytest (the ``cloud_tasks`` fixture of this
package's pytest plugin) and ``unittest`` (``CloudTasksTestCase``).

While a harness is active, every ``CloudTasksBackend`` alias in ``TASKS`` sends its tasks to the
emulator and the live server (``TASK_HANDLER_HOST``); without ``OIDC_SERVICE_ACCOUNT_EMAIL`` the
view runs them unauthenticated (test servers run with ``DEBUG`` off); with it, the emulator signs
real tokens which the view verifies. If no alias uses this backend, ``default`` is replaced with
one, so the harness works whatever ``TASKS`` said when the tasks were imported.

Queues answer fast in tests: ``TEST_QUEUE_RETRY`` (a failing task is tried 3 times, 0.05 s to 0.5 s
apart), so a test of a failing task takes under a second.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task, TaskResult
from django.tasks.signals import task_enqueued
from django.test import LiveServerTestCase, override_settings

if TYPE_CHECKING:
    from google.cloud import tasks_v2

    from .emulator import DispatchRecord, Emulator

__all__ = [
    "TEST_QUEUE_RETRY",
    "CloudTasksHarness",
    "CloudTasksTestCase",
    "EnqueuedTask",
    "start_emulator",
]

_BACKEND = "django_tasks_cloud_tasks.CloudTasksBackend"
TEST_QUEUE_RETRY: Mapping[str, Any] = {"max_attempts": 3, "min_backoff": 0.05, "max_backoff": 0.5}
# Generous: a loaded CI machine can take seconds to run what takes milliseconds on a laptop.
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class EnqueuedTask:
    """One ``enqueue()`` seen by the harness: what was asked for, whether or not it ran."""

    result: TaskResult[..., Any]

    @property
    def task(self) -> Task[..., Any]:
        return self.result.task

    @property
    def task_path(self) -> str:
        return self.result.task.module_path

    @property
    def args(self) -> list[Any]:
        return list(self.result.args)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.result.kwargs)

    @property
    def queue_name(self) -> str:
        return self.result.task.queue_name

    @property
    def priority(self) -> int:
        return self.result.task.priority

    @property
    def run_after(self) -> datetime | None:
        return self.result.task.run_after

    @property
    def backend(self) -> str:
        return self.result.backend

    def __str__(self) -> str:
        when = f", run_after={self.run_after.isoformat()}" if self.run_after else ""
        return (
            f"{self.task_path}(*{self.args!r}, **{self.kwargs!r}) on queue "
            f"{self.queue_name!r}, priority {self.priority}{when}"
        )


_UNSET: Any = object()


class CloudTasksHarness:
    """Points the project's Cloud Tasks backends at ``emulator`` and ``handler_host`` while active.

    ``start()`` and ``stop()`` bracket a test (the fixture and the TestCase do it for you).
    """

    def __init__(self, emulator: Emulator, handler_host: str) -> None:
        self.emulator = emulator
        self.handler_host = handler_host.rstrip("/")
        self.enqueued: list[EnqueuedTask] = []
        self._held = False
        self._queues: set[str] = set()  # full Cloud Tasks queue names this harness serves
        self._settings: override_settings | None = None
        self._previous_host: str | None = None

    # Lifecycle

    def start(self) -> None:
        from django.conf import settings

        self.emulator.reset()
        self._previous_host = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
        os.environ["CLOUD_TASKS_EMULATOR_HOST"] = self.emulator.address
        self._settings = override_settings(TASKS=self._tasks_setting(settings.TASKS))
        self._settings.enable()
        try:
            self._create_queues()
        except BaseException:
            self.stop()
            raise
        task_enqueued.connect(self._record, dispatch_uid=id(self))

    def stop(self) -> None:
        task_enqueued.disconnect(dispatch_uid=id(self))
        if self._held:
            self.release()
        self.emulator.reset()
        if self._settings is not None:
            self._settings.disable()
            self._settings = None
        if self._previous_host is None:
            os.environ.pop("CLOUD_TASKS_EMULATOR_HOST", None)
        else:
            os.environ["CLOUD_TASKS_EMULATOR_HOST"] = self._previous_host

    # Running tasks

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> list[DispatchRecord]:
        """Wait until every task enqueued so far has run (retries included); its attempts."""
        if self._held and self._pending():
            raise AssertionError(
                "Tasks are held (hold() was called): run them with run_pending(), or release()."
            )
        self._wait_until_idle(timeout)
        return self.emulator.dispatches

    def hold(self) -> None:
        """Keep enqueued tasks waiting (queues paused) until ``run_pending()`` or ``release()``."""
        client = self._client()
        for queue in sorted(self._queues):
            client.pause_queue(name=queue)
        self._held = True

    def release(self) -> None:
        """Resume the queues paused by ``hold()``: due tasks run as they normally would."""
        client = self._client()
        for queue in sorted(self._queues):
            client.resume_queue(name=queue)
        self._held = False

    def run_pending(self, timeout: float = DEFAULT_TIMEOUT) -> list[DispatchRecord]:
        """Run every waiting task now, even if held or scheduled later, and wait for the outcome.

        Returns the attempts this made (retries of failing tasks included). Tasks enqueued
        afterwards are held again if they were before.
        """
        from google.api_core.exceptions import NotFound

        before = len(self.emulator.dispatches)
        client = self._client()
        for task in self._pending():
            # RunTask starts an attempt even in a paused queue; a task may finish in between.
            with contextlib.suppress(NotFound):
                client.run_task(name=task.name)
        held = self._held
        if held:
            self.release()  # for the retries of tasks that fail
        try:
            self._wait_until_idle(timeout)
        finally:
            if held:
                self.hold()
        return self.emulator.dispatches[before:]

    @property
    def dispatches(self) -> list[DispatchRecord]:
        """Every delivery attempt in this test: queue, task, url, status, attempt, headers."""
        return self.emulator.dispatches

    # Assertions

    def assert_enqueued(
        self,
        task: Task[..., Any],
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue_name: str | None = None,
        priority: int | None = None,
        run_after: datetime | None = _UNSET,
        count: int | None = None,
    ) -> EnqueuedTask:
        """Assert ``task`` was enqueued with these values (those given); return the last match.

        ``count`` asserts how many enqueues matched. Nothing needs to have run.
        """
        matches = [
            e
            for e in self.enqueued
            if e.task_path == task.module_path
            and (args is None or e.args == list(args))
            and (kwargs is None or e.kwargs == kwargs)
            and (queue_name is None or e.queue_name == queue_name)
            and (priority is None or e.priority == priority)
            and (run_after is _UNSET or e.run_after == run_after)
        ]
        if not matches or (count is not None and len(matches) != count):
            wanted = {
                "args": args,
                "kwargs": kwargs,
                "queue_name": queue_name,
                "priority": priority,
                "run_after": None if run_after is _UNSET else run_after,
            }
            shown = ", ".join(f"{k}={v!r}" for k, v in wanted.items() if v is not None)
            seen = "\n  ".join(map(str, self.enqueued)) or "nothing"
            times = f"{count} time(s)" if count is not None else "at least once"
            raise AssertionError(
                f"Expected {task.module_path} ({shown or 'any arguments'}) enqueued {times}, "
                f"found {len(matches)}. Enqueued:\n  {seen}"
            )
        return matches[-1]

    def assert_nothing_enqueued(self) -> None:
        if self.enqueued:
            seen = "\n  ".join(map(str, self.enqueued))
            raise AssertionError(f"Expected no task enqueued, found:\n  {seen}")

    # Queues

    def create_queue(self, name: str, **retry: Any) -> None:
        """Create another queue in every backend's project and location (``TEST_QUEUE_RETRY``
        unless overridden; ``Emulator.create_queue``'s keywords)."""
        for backend in self._backends():
            self._ensure_queue(backend.config.queue_path(name), retry)

    # Internals

    def _tasks_setting(self, tasks: Mapping[str, Any]) -> dict[str, Any]:
        configured = {alias: dict(params) for alias, params in tasks.items()}
        ours = [alias for alias, params in configured.items() if params.get("BACKEND") == _BACKEND]
        if not ours:
            configured[DEFAULT_TASK_BACKEND_ALIAS] = {"BACKEND": _BACKEND, "QUEUES": []}
            ours = [DEFAULT_TASK_BACKEND_ALIAS]
        for alias in ours:
            options = dict(configured[alias].get("OPTIONS") or {})
            options["TASK_HANDLER_HOST"] = self.handler_host
            if not options.get("OIDC_SERVICE_ACCOUNT_EMAIL"):
                # Test servers run with DEBUG off, where the view refuses unauthenticated calls.
                options["ALLOW_UNAUTHENTICATED"] = True
            configured[alias] = {**configured[alias], "OPTIONS": options}
        return configured

    def _backends(self) -> list[Any]:
        from django.tasks import task_backends

        from .backend import CloudTasksBackend

        found = []
        for alias in task_backends.settings:
            try:
                backend = task_backends[alias]
            except ImproperlyConfigured:
                continue
            if isinstance(backend, CloudTasksBackend):
                found.append(backend)
        return found

    def _create_queues(self) -> None:
        task_queues = _imported_task_queues()
        for backend in self._backends():
            config = backend.config
            names = {DEFAULT_TASK_QUEUE_NAME, *backend.queues, *task_queues}
            names.update(queue_id for _, queue_id in config.priority_queues)
            for name in names:
                self._ensure_queue(config.queue_path(name), {})

    def _ensure_queue(self, path: str, retry: Mapping[str, Any]) -> None:
        from google.api_core.exceptions import AlreadyExists

        _, project, _, location, _, name = path.split("/")
        # A queue made by an earlier test stays: the emulator outlives the tests.
        with contextlib.suppress(AlreadyExists):
            self.emulator.create_queue(name, project, location, **{**TEST_QUEUE_RETRY, **retry})
        self._queues.add(path)
        if self._held:
            self._client().pause_queue(name=path)

    def _client(self) -> Any:
        from .client import sync_client

        return sync_client(self.emulator.address)

    def _pending(self) -> list[tasks_v2.Task]:
        client = self._client()
        return [task for queue in sorted(self._queues) for task in client.list_tasks(parent=queue)]

    def _wait_until_idle(self, timeout: float) -> None:
        if not self.emulator.wait_until_idle(timeout):
            waiting = len(self._pending())
            what = f"{waiting} task(s) waiting in the queues" if waiting else "an attempt in flight"
            raise AssertionError(f"Tasks were still pending or running after {timeout} s: {what}")

    def _record(self, sender: Any, task_result: TaskResult[..., Any], **kwargs: Any) -> None:
        self.enqueued.append(EnqueuedTask(task_result))


def _imported_task_queues() -> set[str]:
    """The queue names of the tasks defined in installed apps' modules imported so far.

    With ``QUEUES: []`` any name is allowed, and a test's tasks are imported by the time it runs:
    creating their queues spares each test a ``create_queue`` call for ``@task(queue_name=...)``.
    """
    from django.apps import apps

    packages = tuple(app.name for app in apps.get_app_configs())
    names = set()
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(packages):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Task):
                names.add(value.queue_name)
    return names


def start_emulator() -> Emulator:
    """A started emulator with the backend's local project and location, for a test run.

    Stop it before the live server it delivers to: its connections to that server are kept alive,
    and a server thread closing one after the test database is gone reports an error.
    """
    from .config import LOCAL_LOCATION, LOCAL_PROJECT
    from .emulator import Emulator

    return Emulator(project=LOCAL_PROJECT, location=LOCAL_LOCATION, queues=()).start()


class CloudTasksTestCase(LiveServerTestCase):
    """A ``LiveServerTestCase`` whose tasks go through the emulator to its live server.

    ``self.cloud_tasks`` is the ``CloudTasksHarness`` of the running test.
    """

    cloud_tasks: CloudTasksHarness
    emulator: Emulator

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.emulator = start_emulator()
        # Cleanups run in reverse: the emulator stops before the live server does.
        cls.addClassCleanup(cls.emulator.stop)

    def setUp(self) -> None:
        super().setUp()
        self.cloud_tasks = CloudTasksHarness(self.emulator, self.live_server_url)
        self.cloud_tasks.start()
        self.addCleanup(self.cloud_tasks.stop)
