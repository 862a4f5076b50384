"""Results you can read: with STORE_RESULTS, tasks leave a row that refresh() and get_result() read.

Everything runs the real path: enqueue over gRPC to the emulator, delivery over HTTP to the live
server, rows in the test database that both share.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.tasks import TaskResultStatus, default_task_backend
from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_tasks_cloud_tasks import config, store
from django_tasks_cloud_tasks.execution import UNKNOWN_WORKER, worker_id
from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_execute_view import body as execute_view_body

pytestmark = pytest.mark.django_db(transaction=True)


def body(task_id: str, task_path: str = "tests.tasks.add", **fields: Any) -> dict[str, Any]:
    return execute_view_body(
        **{"args": [2, 3], **fields, "task_id": task_id, "task_path": task_path}
    )


def deliver(
    cloud_tasks: CloudTasks, document: dict[str, Any], retries: int | None = None
) -> requests.Response:
    """POST a delivery to the live server as Cloud Tasks would, with its retry count header."""
    headers = {"Content-Type": "application/json"}
    if retries is not None:
        headers["X-CloudTasks-TaskRetryCount"] = str(retries)
    url = f"{cloud_tasks.handler_host}/cloudtasks/execute/"
    return requests.post(url, data=json.dumps(document), headers=headers, timeout=10)


def writes(queries: CaptureQueriesContext) -> list[str]:
    return [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]


def test_refresh_goes_from_ready_to_successful_with_the_return_value(stored: CloudTasks) -> None:
    result = tasks.add.using(run_after=timezone.now() + timedelta(seconds=0.5)).enqueue(2, 3)

    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY
    recorder.wait_for(1)
    assert stored.emulator.wait_until_idle()
    result.refresh()

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids == [worker_id()]
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at


def test_a_failing_task_ends_failed_with_a_traceback_and_a_worker_per_attempt(
    stored: CloudTasks,
) -> None:
    result = tasks.always_fails.enqueue()

    assert stored.emulator.wait_until_idle()
    result.refresh()

    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3  # The emulator's queues give up after three.
    assert result.worker_ids == [worker_id()] * 3
    assert [error.exception_class for error in result.errors] == [ValueError] * 3
    assert "this task always fails" in result.errors[-1].traceback
    assert result.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


def test_a_retried_task_succeeds_with_the_error_of_its_first_attempt(stored: CloudTasks) -> None:
    result = tasks.fails_first_attempt.enqueue()

    assert stored.emulator.wait_until_idle()
    result.refresh()

    assert [call.attempt for call in recorder.calls] == [1, 2]
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.attempts == 2
    assert [error.exception_class for error in result.errors] == [RuntimeError]
    assert [d.status for d in stored.emulator.dispatches] == [500, 200]


async def test_aget_result_and_arefresh(stored: CloudTasks) -> None:
    result = await tasks.add.aenqueue(20, 22)

    assert await asyncio.to_thread(stored.emulator.wait_until_idle)
    await result.arefresh()
    fetched = await tasks.add.aget_result(result.id)

    assert result.status == fetched.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == fetched.return_value == 42
    assert fetched.args == [20, 22]


def test_results_are_stored_under_asgi(stored: CloudTasks, asgi_server: tuple[str, str]) -> None:
    stored.handler_host = asgi_server[0]
    stored.configure(STORE_RESULTS=True)

    added = tasks.async_add.enqueue(1, 2)
    retried = tasks.fails_first_attempt.enqueue()

    assert stored.emulator.wait_until_idle()
    added.refresh()
    retried.refresh()
    assert (added.status, added.return_value) == (TaskResultStatus.SUCCESSFUL, 3)
    assert (retried.status, retried.return_value) == (TaskResultStatus.SUCCESSFUL, 2)
    assert retried.worker_ids == [worker_id()] * 2


def test_an_unknown_id_does_not_exist(stored: CloudTasks) -> None:
    with pytest.raises(TaskResultDoesNotExist, match="no-such-id"):
        default_task_backend.get_result("no-such-id")


async def test_an_unknown_id_does_not_exist_async(stored: CloudTasks) -> None:
    with pytest.raises(TaskResultDoesNotExist, match="no-such-id"):
        await default_task_backend.aget_result("no-such-id")


def test_a_result_of_another_task_is_a_mismatch(stored: CloudTasks) -> None:
    result = tasks.add.enqueue(1, 1)

    with pytest.raises(TaskResultMismatch):
        tasks.greet.get_result(result.id)


async def test_without_the_store_results_cannot_be_read(cloud_tasks: CloudTasks) -> None:
    result = await tasks.add.aenqueue(1, 2)

    assert default_task_backend.supports_get_result is False
    with pytest.raises(NotImplementedError):
        result.refresh()
    with pytest.raises(NotImplementedError):
        await result.arefresh()
    with pytest.raises(NotImplementedError):
        await default_task_backend.aget_result(result.id)


def test_without_the_store_nothing_touches_the_database(cloud_tasks: CloudTasks) -> None:
    with CaptureQueriesContext(connection) as enqueue_queries:
        tasks.add.enqueue(1, 2)
    with CaptureQueriesContext(connection) as execute_queries:
        response = Client().post(
            "/cloudtasks/execute/", body("no-store"), content_type="application/json"
        )

    assert response.status_code == 200
    assert enqueue_queries.captured_queries == execute_queries.captured_queries == []
    recorder.wait_for(2)
    assert not TaskRecord.objects.exists()


def test_enqueue_writes_one_row_in_one_statement(stored: CloudTasks) -> None:
    with CaptureQueriesContext(connection) as queries:
        result = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)

    assert len(writes(queries)) == 1
    record = TaskRecord.objects.get(pk=result.id)
    assert record.status == TaskResultStatus.READY
    assert record.cloud_task_name.startswith("projects/test-project/locations/us-central1/")
    assert (record.task_path, record.args, record.queue_name) == (
        "tests.tasks.add",
        [1, 2],
        "default",
    )


def test_an_execution_writes_twice_once_claimed_and_once_finished(stored: CloudTasks) -> None:
    result = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(2, 3)

    # The test client runs the view in this thread, so its queries are captured here.
    with CaptureQueriesContext(connection) as queries:
        response = Client().post(
            "/cloudtasks/execute/", body(result.id), content_type="application/json"
        )

    assert response.status_code == 200
    assert [sql.split()[0] for sql in writes(queries)] == ["UPDATE", "UPDATE"]
    assert len(queries.captured_queries) == 2  # A READY row is claimed without reading it.
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL


def test_a_duplicate_delivery_tries_the_claim_then_reads_and_changes_nothing(
    stored: CloudTasks,
) -> None:
    result = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(2, 3)
    Client().post("/cloudtasks/execute/", body(result.id), content_type="application/json")
    finished = TaskRecord.objects.get(pk=result.id)

    with CaptureQueriesContext(connection) as queries:
        response = Client().post(
            "/cloudtasks/execute/", body(result.id), content_type="application/json"
        )

    assert response.json()["duplicate"] is True
    # The claim of a READY row matches nothing; the row read shows the task succeeded.
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["UPDATE", "SELECT"]
    assert TaskRecord.objects.get(pk=result.id).last_attempted_at == finished.last_attempted_at
    assert len(recorder.calls) == 1


def test_a_delivery_for_a_row_never_written_creates_it(stored: CloudTasks) -> None:
    response = deliver(stored, body("delivered-first", args=[4, 5]))

    assert response.json() == {"status": "success", "task_id": "delivered-first"}
    result = tasks.add.get_result("delivered-first")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 9
    assert result.args == [4, 5]
    assert result.worker_ids == [worker_id()]


def test_an_enqueue_written_after_its_delivery_keeps_the_delivered_state(
    stored: CloudTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_enqueued = store.record_enqueued

    def after_the_task_ran(*args: Any) -> None:
        recorder.wait_for(1)
        assert stored.emulator.wait_until_idle()
        record_enqueued(*args)

    monkeypatch.setattr(store, "record_enqueued", after_the_task_ran)

    result = tasks.add.enqueue(3, 4)

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 7
    assert TaskRecord.objects.get(pk=result.id).cloud_task_name.endswith(
        stored.emulator.dispatches[0].task
    )


def test_the_enqueue_write_adds_only_the_cloud_task_name_to_a_delivered_row(
    stored: CloudTasks,
) -> None:
    deliver(stored, body("delivered"))
    delivered = tasks.add.get_result("delivered")

    with transaction.atomic():
        store.record_enqueued(delivered, "projects/p/locations/l/queues/default/tasks/1")
        # The conflicting INSERT is contained: the caller's transaction goes on.
        User.objects.create(username="after-the-conflict")

    record = TaskRecord.objects.get(pk="delivered")
    assert record.status == TaskResultStatus.SUCCESSFUL
    assert record.return_value == 5
    assert record.cloud_task_name == "projects/p/locations/l/queues/default/tasks/1"
    assert User.objects.filter(username="after-the-conflict").exists()


def test_a_delivery_before_the_enqueuing_transaction_commits_waits_for_it(
    stored: CloudTasks,
) -> None:
    with transaction.atomic():
        User.objects.create(username="ada")
        result = tasks.user_exists.enqueue("ada")
        # Long enough for the delivery to arrive and find the row not committed yet.
        time.sleep(0.3)

    assert stored.emulator.wait_until_idle()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value is True
    assert result.attempts == 1
    assert len(recorder.calls) == 1


def test_on_commit_enqueues_once_the_transaction_commits(stored: CloudTasks) -> None:
    with transaction.atomic():
        User.objects.create(username="grace")
        transaction.on_commit(partial(tasks.user_exists.enqueue, "grace"))
        time.sleep(0.2)
        assert stored.emulator.dispatches == []

    (call,) = recorder.wait_for(1)
    assert call.kwargs == {"exists": True}


def test_on_commit_enqueues_nothing_when_the_transaction_rolls_back(stored: CloudTasks) -> None:
    def sign_up() -> None:
        with transaction.atomic():
            User.objects.create(username="linus")
            transaction.on_commit(partial(tasks.user_exists.enqueue, "linus"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        sign_up()

    assert stored.emulator.wait_until_idle()
    assert stored.emulator.dispatches == []
    assert not TaskRecord.objects.exists()


def test_the_attempt_number_still_comes_from_cloud_tasks(stored: CloudTasks) -> None:
    document = body("retried", task_path="tests.tasks.describe", args=["x"])
    TaskRecord.objects.create(
        id="retried",
        task_path="tests.tasks.describe",
        queue_name="default",
        backend="default",
        status=TaskResultStatus.FAILED,
        worker_ids=["earlier-worker"],
    )

    # Retry count 3: attempts 2 and 3 were never seen by the store (say, refused as duplicates).
    response = deliver(stored, document, retries=3)

    assert response.status_code == 200
    assert recorder.calls[0].attempt == 4
    assert tasks.describe.get_result("retried").worker_ids == [
        "earlier-worker",
        UNKNOWN_WORKER,
        UNKNOWN_WORKER,
        worker_id(),
    ]


BASE_OPTIONS = {
    "CLOUD_TASKS_PROJECT": "p",
    "CLOUD_TASKS_LOCATION": "l",
    "TASK_HANDLER_HOST": "https://example.com",
}


def test_store_results_must_be_a_boolean() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"STORE_RESULTS.*must be True or False"):
        config.resolve("not-a-boolean", BASE_OPTIONS | {"STORE_RESULTS": "yes"})


def test_store_results_needs_the_app_installed(settings: Any) -> None:
    settings.INSTALLED_APPS = [
        app for app in settings.INSTALLED_APPS if app != "django_tasks_cloud_tasks"
    ]

    with pytest.raises(ImproperlyConfigured, match="add 'django_tasks_cloud_tasks' to INSTALLED"):
        config.resolve("without-the-app", BASE_OPTIONS | {"STORE_RESULTS": True})
