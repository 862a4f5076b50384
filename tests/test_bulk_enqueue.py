"""enqueue_many: many calls of a task in BatchCreateTasks calls of up to 100, results in order,
``task_enqueued`` for each, and partial failure reported call by call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from django.tasks import TaskResultStatus
from django.tasks.signals import task_enqueued
from google.cloud import tasks_v2

from django_tasks_cloud_tasks import BulkEnqueueError, Call, aenqueue_many, enqueue_many
from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import LOCATION, PROJECT, CloudTasks
from tests.tasks import recorder
from tests.test_enqueue_errors import queued_tasks

PARENT = f"projects/{PROJECT}/locations/{LOCATION}/queues/default"


def test_250_calls_run_once_each_and_come_back_in_order(cloud_tasks: CloudTasks) -> None:
    enqueued: list[str] = []

    def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        enqueued.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        results = enqueue_many(tasks.add, [Call(i, b=1) for i in range(250)])
    finally:
        task_enqueued.disconnect(on_enqueued)

    assert [r.args for r in results] == [[i] for i in range(250)]
    assert all(r.status == TaskResultStatus.READY for r in results)
    assert enqueued == [r.id for r in results]
    calls = recorder.wait_for(250, timeout=60)
    assert sorted(c.args for c in calls) == [(i, 1) for i in range(250)]


async def test_aenqueue_many_creates_every_task(cloud_tasks: CloudTasks) -> None:
    import asyncio

    results = await aenqueue_many(tasks.add, [Call(i, 2) for i in range(120)])

    assert len(results) == 120
    calls = await asyncio.to_thread(recorder.wait_for, 120, 60)
    assert sorted(c.args for c in calls) == [(i, 2) for i in range(120)]


def test_a_failed_batch_call_is_retried_without_duplicates(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.emulator.inject_fault("BatchCreateTasks", status="UNAVAILABLE", after_success=True)

    enqueue_many(tasks.add, [Call(i, 3) for i in range(10)])

    recorder.wait_for(10)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(cloud_tasks.emulator.dispatches) == 10


@pytest.mark.django_db(transaction=True)
def test_partial_failure_says_which_calls_were_added(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(STORE_RESULTS=True)
    # The first batch (100 tasks) goes through; the second (50) is refused for good.
    cloud_tasks.emulator.inject_fault("BatchCreateTasks", delay=0.01)
    cloud_tasks.emulator.inject_fault("BatchCreateTasks", status="PERMISSION_DENIED")

    with pytest.raises(BulkEnqueueError) as excinfo:
        enqueue_many(tasks.add, [Call(i, 5) for i in range(150)])

    error = excinfo.value
    assert [r.args[0] for r in error.results] == list(range(150))
    assert error.enqueued == error.results[:100]
    assert sorted(error.not_added) == list(range(100, 150))
    assert error.unknown == []
    assert "100 added, 50 not added" in str(error)
    assert "Permission denied" in error.not_added[100]
    recorder.wait_for(100, timeout=60)
    assert cloud_tasks.emulator.wait_until_idle(30)
    assert len(recorder.calls) == 100
    stored = TaskRecord.objects.filter(pk__in=[r.id for r in error.results])
    assert set(stored.values_list("pk", flat=True)) == {r.id for r in error.enqueued}


def test_an_outcome_unknown_for_a_whole_batch_lists_every_call(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(ENQUEUE_DEADLINE=1)
    cloud_tasks.emulator.inject_fault("BatchCreateTasks", status="UNAVAILABLE", times=None)

    with pytest.raises(BulkEnqueueError, match="3 may have been added") as excinfo:
        enqueue_many(tasks.add, [Call(i, 6) for i in range(3)])

    assert excinfo.value.unknown == [0, 1, 2]
    assert excinfo.value.enqueued == []


def test_the_emulator_reports_per_task_failures_in_the_operation_metadata(
    cloud_tasks: CloudTasks,
) -> None:
    client = cloud_tasks.client
    good = {"parent": PARENT, "task": {"http_request": {"url": "http://127.0.0.1:9/"}}}
    bad = {"parent": PARENT, "task": {"http_request": {"url": "ftp://example.com/"}}}
    named = {
        "parent": PARENT,
        "task": {"name": f"{PARENT}/tasks/t1", "http_request": {"url": "http://127.0.0.1:9/"}},
    }
    client.pause_queue(name=PARENT)
    try:
        operation = client.batch_create_tasks(parent=PARENT, requests=[good, bad, named, named])
        response = operation.result()
        metadata = operation.metadata
    finally:
        client.purge_queue(name=PARENT)
        client.resume_queue(name=PARENT)

    assert len(response.tasks) == 2
    assert response.tasks[1].name == f"{PARENT}/tasks/t1"
    assert metadata.state == tasks_v2.BatchCreateTasksMetadata.State.PARTIALLY_SUCCEEDED
    assert {i: s.code for i, s in metadata.failed_requests.items()} == {
        1: grpc.StatusCode.INVALID_ARGUMENT.value[0],
        3: grpc.StatusCode.ALREADY_EXISTS.value[0],
    }


def test_the_emulator_answers_a_repeated_request_id_with_the_first_operation(
    cloud_tasks: CloudTasks,
) -> None:
    client = cloud_tasks.client
    request = {
        "parent": PARENT,
        "requests": [{"parent": PARENT, "task": {"http_request": {"url": "http://127.0.0.1:9/"}}}],
        "request_id": "once",
    }
    client.pause_queue(name=PARENT)
    try:
        first = client.batch_create_tasks(request=request).result()
        second = client.batch_create_tasks(request=request).result()
        assert len(queued_tasks(cloud_tasks)) == 1
    finally:
        client.purge_queue(name=PARENT)
        client.resume_queue(name=PARENT)
    assert first.tasks[0].name == second.tasks[0].name


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([], id="empty"),
        pytest.param(
            [{"parent": PARENT, "task": {"http_request": {"url": "http://a/"}}}] * 101,
            id="over-100",
        ),
        pytest.param(
            [{"parent": PARENT + "x", "task": {"http_request": {"url": "http://a/"}}}],
            id="other-queue",
        ),
    ],
)
def test_the_emulator_refuses_a_malformed_batch(
    cloud_tasks: CloudTasks, requests: list[dict[str, Any]]
) -> None:
    stub = cloud_tasks.client._transport.batch_create_tasks  # Past the client's checks.
    with pytest.raises(grpc.RpcError) as excinfo:
        stub(tasks_v2.BatchCreateTasksRequest(parent=PARENT, requests=requests))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert queued_tasks(cloud_tasks) == []


def test_batch_delete_deletes_and_reports_what_it_could_not(cloud_tasks: CloudTasks) -> None:
    client = cloud_tasks.client
    client.pause_queue(name=PARENT)
    try:
        created = client.create_task(
            parent=PARENT, task={"http_request": {"url": "http://127.0.0.1:9/"}}
        )
        operation = client.batch_delete_tasks(
            parent=PARENT, names=[created.name, f"{PARENT}/tasks/missing"]
        )
        operation.result()
        metadata = operation.metadata
    finally:
        client.resume_queue(name=PARENT)

    assert queued_tasks(cloud_tasks) == []
    assert metadata.state == tasks_v2.BatchDeleteTasksMetadata.State.PARTIALLY_SUCCEEDED
    assert list(metadata.failed_requests) == [1]


@pytest.mark.django_db(transaction=True)
def test_bulk_results_are_stored(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(STORE_RESULTS=True)

    results = enqueue_many(tasks.add, [Call(i, 4) for i in range(5)])

    recorder.wait_for(5)
    assert cloud_tasks.emulator.wait_until_idle()
    assert TaskRecord.objects.filter(pk__in=[r.id for r in results]).count() == 5


def test_a_batch_delete_in_which_every_delete_fails_is_aborted(cloud_tasks: CloudTasks) -> None:
    from google.api_core.exceptions import Aborted

    operation = cloud_tasks.client.batch_delete_tasks(
        parent=PARENT, names=[f"{PARENT}/tasks/missing", f"{PARENT}/tasks/gone"]
    )

    with pytest.raises(Aborted):
        operation.result()
    assert operation.metadata.state == tasks_v2.BatchDeleteTasksMetadata.State.FAILED
    assert sorted(operation.metadata.failed_requests) == [0, 1]
