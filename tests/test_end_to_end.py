"""A task enqueued in Django reaches the emulator over gRPC, comes back over HTTP, and runs."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.tasks import TaskResultStatus
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from django_tasks_cloud_tasks import CloudTasksBackend
from tests import tasks
from tests.conftest import LOCATION, PROJECT, CloudTasks
from tests.tasks import recorder


def test_enqueue_runs_the_task_once_with_its_arguments(cloud_tasks: CloudTasks) -> None:
    result = tasks.greet.enqueue("Ada", greeting="Bonjour")

    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    assert recorder.wait_for(1)[0].args == ("Ada",)
    assert recorder.calls[0].kwargs == {"greeting": "Bonjour"}
    assert cloud_tasks.emulator.wait_until_idle()
    assert [d.status for d in cloud_tasks.emulator.dispatches] == [200]
    assert len(recorder.calls) == 1


def test_dispatch_targets_the_configured_handler(cloud_tasks: CloudTasks) -> None:
    tasks.add.enqueue(2, 3)

    recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    (dispatch,) = cloud_tasks.emulator.dispatches
    assert dispatch.url == f"{cloud_tasks.handler_host}/cloudtasks/execute/"
    assert dispatch.queue == "default"
    assert dispatch.headers["Content-Type"] == "application/json"


def test_environment_alone_configures_the_backend(
    cloud_tasks: CloudTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("CLOUD_TASKS_LOCATION", LOCATION)
    monkeypatch.setenv("SERVICE_URL", cloud_tasks.handler_host)
    cloud_tasks.settings.DEBUG = True  # Local development: no authentication configured.
    cloud_tasks.settings.TASKS = {
        "default": {"BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend", "QUEUES": []}
    }

    tasks.add.enqueue(1, 1)

    assert recorder.wait_for(1)[0].args == (1, 1)


def test_task_queue_name_routes_to_that_cloud_tasks_queue(cloud_tasks: CloudTasks) -> None:
    tasks.on_high_priority_queue.enqueue()

    (call,) = recorder.wait_for(1)
    assert call.queue_name == "high-priority"
    assert cloud_tasks.emulator.wait_until_idle()
    assert [d.queue for d in cloud_tasks.emulator.dispatches] == ["high-priority"]


def test_priority_bands_route_to_their_queue_and_priority_reaches_the_task(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(PRIORITY_QUEUES={"urgent": 50})

    tasks.urgent.enqueue()
    tasks.describe.using(priority=49).enqueue("ordinary")

    calls = recorder.wait_for(2)
    assert {(c.name, c.priority) for c in calls} == {("urgent", 50), ("describe", 49)}
    assert cloud_tasks.emulator.wait_until_idle()
    assert sorted(d.queue for d in cloud_tasks.emulator.dispatches) == ["default", "urgent"]


def test_run_after_delays_execution(cloud_tasks: CloudTasks) -> None:
    run_after = timezone.now() + timedelta(seconds=0.5)

    tasks.add.using(run_after=run_after).enqueue(4, 4)

    # Its one attempt started no earlier (the emulator's clock is this machine's).
    [attempt] = cloud_tasks.wait()
    assert attempt.started_at >= run_after.timestamp()
    assert recorder.calls[0].args == (4, 4)


def test_failed_attempt_is_retried_with_the_next_attempt_number(cloud_tasks: CloudTasks) -> None:
    tasks.fails_first_attempt.enqueue()

    calls = recorder.wait_for(2)
    assert [c.attempt for c in calls] == [1, 2]
    assert calls[0].task_id == calls[1].task_id
    assert cloud_tasks.emulator.wait_until_idle()
    assert [d.status for d in cloud_tasks.emulator.dispatches] == [500, 200]


def test_a_task_that_always_fails_stops_after_the_queue_max_attempts(
    cloud_tasks: CloudTasks,
) -> None:
    tasks.always_fails.enqueue()

    assert cloud_tasks.emulator.wait_until_idle()
    assert len(recorder.named("always_fails")) == 3
    assert [d.status for d in cloud_tasks.emulator.dispatches] == [500, 500, 500]


def test_context_carries_the_result_id_and_attempt(cloud_tasks: CloudTasks) -> None:
    result = tasks.describe.enqueue("hi")

    (call,) = recorder.wait_for(1)
    assert call.task_id == result.id
    assert call.attempt == 1
    assert call.args == ("hi",)


async def test_aenqueue_uses_the_async_client(cloud_tasks: CloudTasks) -> None:
    results = await asyncio.gather(*(tasks.add.aenqueue(i, i) for i in range(20)))

    assert len({r.id for r in results}) == 20
    calls = await asyncio.to_thread(recorder.wait_for, 20)
    assert sorted(c.args for c in calls) == sorted((i, i) for i in range(20))


def test_async_task_runs_natively_under_asgi(
    cloud_tasks: CloudTasks, asgi_server: tuple[str, str]
) -> None:
    url, loop_thread = asgi_server
    cloud_tasks.handler_host = url
    cloud_tasks.configure()

    result = tasks.async_add.enqueue(20, 22)

    (call,) = recorder.wait_for(1)
    assert call.args == (20, 22)
    # Awaited on the server's event loop thread, not pushed to a worker thread.
    assert call.kwargs["thread"] == loop_thread
    assert cloud_tasks.emulator.wait_until_idle()
    assert [d.status for d in cloud_tasks.emulator.dispatches] == [200]
    assert result.id


def test_sync_task_runs_under_asgi(cloud_tasks: CloudTasks, asgi_server: tuple[str, str]) -> None:
    cloud_tasks.handler_host = asgi_server[0]
    cloud_tasks.configure()

    tasks.fails_first_attempt.enqueue()

    assert [c.attempt for c in recorder.wait_for(2)] == [1, 2]


def test_signals_are_sent_at_enqueue_and_execution(cloud_tasks: CloudTasks) -> None:
    seen: list[tuple[str, type, Any]] = []
    done = threading.Event()

    def on(name: str) -> Any:
        def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, sender, task_result.status))
            if name == "finished":
                done.set()

        return receiver

    receivers = {task_enqueued: on("enqueued"), task_started: on("started")}
    receivers[task_finished] = on("finished")
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:
        tasks.add.enqueue(1, 2)
        assert done.wait(10)
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)

    # Cloud Tasks may dispatch before CreateTask has returned, so "enqueued" can come last.
    assert ("enqueued", CloudTasksBackend, TaskResultStatus.READY) in seen
    assert [event for event in seen if event[0] != "enqueued"] == [
        ("started", CloudTasksBackend, TaskResultStatus.RUNNING),
        ("finished", CloudTasksBackend, TaskResultStatus.SUCCESSFUL),
    ]


def test_two_hundred_tasks_from_eight_threads_each_run_exactly_once(
    cloud_tasks: CloudTasks,
) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: tasks.add.enqueue(i, 0), range(200)))

    calls = recorder.wait_for(200, timeout=60)
    assert cloud_tasks.emulator.wait_until_idle(timeout=30)
    assert sorted(c.args[0] for c in recorder.calls) == list(range(200))
    assert len(calls) == len(recorder.calls) == 200
    assert len({r.id for r in results}) == 200
