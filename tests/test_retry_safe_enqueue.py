"""enqueue() retries transient failures inside ENQUEUE_DEADLINE without ever adding a task twice.

The emulator's fault injection plays the failing server: refused calls, calls that succeeded but
whose answer was lost, answers that come too late.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import time

import grpc
import pytest
from django.db import DatabaseError
from google.cloud import tasks_v2

from django_tasks_cloud_tasks import CloudTasksError, EnqueueOutcomeUnknown, client
from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_enqueue_errors import queued_tasks


def test_two_unavailable_answers_then_success_add_one_task(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=2)

    result = tasks.add.enqueue(1, 2)

    assert recorder.wait_for(1)[0].args == (1, 2)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 1
    assert cloud_tasks.emulator.pending_faults == []
    assert result.id in cloud_tasks.emulator.dispatches[0].task


def test_a_success_answered_as_deadline_exceeded_adds_one_task(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(ENQUEUE_DEADLINE=30)
    cloud_tasks.emulator.inject_fault(
        "CreateTask", status=grpc.StatusCode.DEADLINE_EXCEEDED, after_success=True
    )

    tasks.add.enqueue(3, 4)

    assert recorder.wait_for(1)[0].args == (3, 4)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 1
    assert len(recorder.calls) == 1


def test_an_answer_later_than_the_attempt_timeout_is_retried_into_one_task(
    cloud_tasks: CloudTasks,
) -> None:
    # Each attempt may use a third of the deadline (at least 1 s): the first is abandoned.
    cloud_tasks.configure(ENQUEUE_DEADLINE=3)
    cloud_tasks.emulator.inject_fault("CreateTask", delay=2)

    tasks.add.enqueue(5, 6)

    assert recorder.wait_for(1)[0].args == (5, 6)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 1


def test_a_persistent_outage_fails_within_the_deadline_and_adds_nothing(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(ENQUEUE_DEADLINE=1)
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=None)

    started = time.monotonic()
    with pytest.raises(EnqueueOutcomeUnknown) as excinfo:
        tasks.add.enqueue(1, 2)

    # Generous: the bound is the deadline plus one backoff, on a loaded machine.
    assert time.monotonic() - started < 10
    error = excinfo.value
    assert "may have been added" in str(error)
    assert error.result_id in str(error)
    assert "ENQUEUE_DEADLINE is 1 s" in str(error)
    cloud_tasks.emulator.clear_faults()
    assert queued_tasks(cloud_tasks) == []
    assert recorder.calls == []


def test_a_refusal_that_no_retry_can_fix_says_not_added_at_once(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.emulator.inject_fault("CreateTask", status="PERMISSION_DENIED")

    with pytest.raises(CloudTasksError, match="Permission denied") as excinfo:
        tasks.add.enqueue(1, 2)

    assert not isinstance(excinfo.value, EnqueueOutcomeUnknown)
    assert cloud_tasks.emulator.pending_faults == []
    assert queued_tasks(cloud_tasks) == []


def test_unnamed_tasks_are_not_retried_after_an_ambiguous_failure(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(NAMED_TASKS=False)
    cloud_tasks.emulator.inject_fault("CreateTask", status="DEADLINE_EXCEEDED", after_success=True)

    with pytest.raises(EnqueueOutcomeUnknown, match="may have been added"):
        tasks.add.enqueue(1, 2)

    # It was added once, and not again: the caller was told the outcome is unknown.
    assert recorder.wait_for(1)[0].args == (1, 2)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 1


def test_unnamed_tasks_get_names_chosen_by_cloud_tasks(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(NAMED_TASKS=False)

    result = tasks.add.enqueue(1, 2)

    assert recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    assert result.id not in cloud_tasks.emulator.dispatches[0].task


async def test_aenqueue_retries_the_same_way(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=2)

    await tasks.add.aenqueue(7, 8)

    assert (await asyncio.to_thread(recorder.wait_for, 1))[0].args == (7, 8)


@pytest.mark.django_db(transaction=True)
def test_a_store_write_failing_after_creation_is_logged_and_the_result_returned(
    cloud_tasks: CloudTasks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cloud_tasks.configure(STORE_RESULTS=True)
    from django_tasks_cloud_tasks import store

    def broken(*args: object, **kwargs: object) -> None:
        raise DatabaseError("the database went away")

    monkeypatch.setattr(store, "record_enqueued", broken)

    with caplog.at_level(logging.ERROR, logger="django_tasks_cloud_tasks.backend"):
        result = tasks.add.enqueue(2, 2)

    assert "its first delivery writes the row" in caplog.text
    assert recorder.wait_for(1)[0].args == (2, 2)
    assert cloud_tasks.emulator.wait_until_idle()
    # The delivery wrote the row the enqueue could not.
    assert TaskRecord.objects.get(pk=result.id).status == "SUCCESSFUL"


def resident_mib() -> float:
    """This process's resident memory now (not its peak, which earlier tests may have set)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_closed_event_loops_release_their_clients(cloud_tasks: CloudTasks) -> None:
    def live_async_clients() -> int:
        gc.collect()
        return sum(type(o) is tasks_v2.CloudTasksAsyncClient for o in gc.get_objects())

    for _ in range(20):  # Warm up: imports, first allocations.
        asyncio.run(tasks.add.aenqueue(0, 0))
    gc.collect()
    before = resident_mib()
    for _ in range(300):
        asyncio.run(tasks.add.aenqueue(0, 0))

    assert live_async_clients() <= 1
    assert len(client._async_clients) <= 1
    # Keeping every loop's client grew it by about 20 MiB; releasing them, by about 3.
    assert resident_mib() - before < 10


def test_fault_plans_for_one_method_apply_in_the_order_they_were_added(
    cloud_tasks: CloudTasks,
) -> None:
    # As in docs/delivery-guarantees.md: refused twice, then created but answered as failed.
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=2)
    cloud_tasks.emulator.inject_fault("CreateTask", status="DEADLINE_EXCEEDED", after_success=True)

    tasks.add.enqueue(1, 1)

    assert recorder.wait_for(1)[0].args == (1, 1)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 1
    assert cloud_tasks.emulator.pending_faults == []
