"""At-least-once delivery made safe: with STORE_RESULTS, a task runs once however often it arrives.

Each test fires real concurrent HTTP requests at the live server, as Cloud Tasks does when it
delivers a task twice.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import timedelta
from itertools import islice
from typing import Any

import pytest
import requests
from django.db import connections, transaction
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_tasks_cloud_tasks import CloudTasksBackend, execution, store
from django_tasks_cloud_tasks.execution import Attempt
from django_tasks_cloud_tasks.models import TaskRecord
from django_tasks_cloud_tasks.payload import decode
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_results import body, deliver

pytestmark = pytest.mark.django_db(transaction=True)

DELIVERIES = 6


def send_at_once(
    pool: ThreadPoolExecutor, cloud_tasks: CloudTasks, document: dict[str, Any]
) -> list[Future[requests.Response]]:
    """Send the same delivery from every thread of ``pool``, released together."""
    barrier = threading.Barrier(DELIVERIES)

    def send() -> requests.Response:
        barrier.wait()
        return deliver(cloud_tasks, document)

    return [pool.submit(send) for _ in range(DELIVERIES)]


def slow_task(task_id: str, seconds: float = 10.0) -> dict[str, Any]:
    return body(task_id, task_path="tests.tasks.slow", args=[seconds], takes_context=True)


def enqueued_for_later() -> str:
    """A READY row, written by a real enqueue, whose Cloud Tasks delivery is an hour away."""
    later = timezone.now() + timedelta(hours=1)
    return tasks.slow.using(run_after=later).enqueue(10.0).id


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
@pytest.mark.parametrize("row", ["missing", "ready"])
def test_concurrent_deliveries_run_the_task_once_and_ask_the_rest_to_retry(
    stored: CloudTasks, row: str, server: str, request: pytest.FixtureRequest
) -> None:
    if server == "asgi":
        stored.handler_host = request.getfixturevalue("asgi_server")[0]
        stored.configure(STORE_RESULTS=True)
    task_id = enqueued_for_later() if row == "ready" else "concurrent-first-delivery"

    with ThreadPoolExecutor(DELIVERIES) as pool:
        sent = send_at_once(pool, stored, slow_task(task_id))
        # The task runs until released, so every delivery but the one running it has answered.
        answered = list(islice(as_completed(sent, timeout=20), DELIVERIES - 1))
        tasks.release_slow.set()
        (ran,) = set(sent) - set(answered)

    assert ran.result().json() == {"status": "success", "task_id": task_id}
    assert len(recorder.named("slow")) == 1
    for refused in (future.result() for future in answered):
        assert refused.status_code == 409
        assert refused.json()["status"] == "running"
        assert "another attempt" in refused.json()["reason"]
        # Until the running attempt's lease (LEASE, 15 s by default) lapses.
        assert 1 <= int(refused.headers["Retry-After"]) <= 15
    result = tasks.slow.get_result(task_id)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 1


def test_deliveries_of_a_task_that_succeeded_are_acknowledged_without_running_it(
    stored: CloudTasks,
) -> None:
    document = slow_task("succeeded-once", seconds=0)
    assert deliver(stored, document).status_code == 200

    with ThreadPoolExecutor(DELIVERIES) as pool:
        responses = [future.result() for future in send_at_once(pool, stored, document)]

    assert [r.status_code for r in responses] == [200] * DELIVERIES
    assert all(
        r.json() == {"status": "success", "task_id": "succeeded-once", "duplicate": True}
        for r in responses
    )
    assert len(recorder.named("slow")) == 1


def test_a_failed_task_runs_again_when_cloud_tasks_retries_it(stored: CloudTasks) -> None:
    document = body("fails", task_path="tests.tasks.always_fails", args=[])

    statuses = [deliver(stored, document, retries=retry).status_code for retry in range(2)]

    assert statuses == [500, 500]
    assert len(recorder.named("always_fails")) == 2
    assert tasks.always_fails.get_result("fails").attempts == 2


@pytest.mark.parametrize(
    ("deadline", "running_for", "runs"),
    [
        (None, timedelta(minutes=11), True),  # Cloud Tasks' default deadline: 10 minutes.
        (None, timedelta(minutes=9), False),
        (15, timedelta(seconds=20), True),
        (15, timedelta(seconds=5), False),
    ],
)
def test_a_delivery_after_the_running_attempts_dispatch_deadline_runs_the_task(
    stored: CloudTasks, deadline: int | None, running_for: timedelta, runs: bool
) -> None:
    if deadline is not None:
        stored.configure(STORE_RESULTS=True, DISPATCH_DEADLINE=deadline)
    attempted_at = timezone.now() - running_for
    TaskRecord.objects.create(
        id="overran",
        task_path="tests.tasks.slow",
        queue_name="default",
        backend="default",
        status=TaskResultStatus.RUNNING,
        started_at=attempted_at,
        last_attempted_at=attempted_at,
        worker_ids=["the-worker-cloud-tasks-gave-up-on"],
    )

    response = deliver(stored, slow_task("overran", seconds=0), retries=1)

    assert response.status_code == (200 if runs else 409)
    assert len(recorder.named("slow")) == (1 if runs else 0)
    if not runs:
        limit = timedelta(seconds=deadline or 600) - running_for
        assert int(response.headers["Retry-After"]) == pytest.approx(limit.total_seconds(), abs=1)


def test_the_outcome_of_an_attempt_claimed_over_is_not_stored(stored: CloudTasks) -> None:
    payload = decode(json.dumps(body("claimed-over")).encode())
    deadline = timedelta(minutes=10)
    overran = store.claim(payload, Attempt(1), deadline)
    assert isinstance(overran, execution.Claim)
    # The first attempt's lease lapses (its renewals failed); Cloud Tasks' retry claims it over.
    TaskRecord.objects.filter(pk=payload.task_id).update(lease_expires_at=timezone.now())
    retry = store.claim(payload, Attempt(2), deadline)
    assert isinstance(retry, execution.Claim)

    late = execution.start(CloudTasksBackend, tasks.add, payload, Attempt(1), overran)
    store.record_finished(execution.run(CloudTasksBackend, late).result, overran)

    assert late.status == TaskResultStatus.SUCCESSFUL
    record = TaskRecord.objects.get(pk=payload.task_id)
    assert record.status == TaskResultStatus.RUNNING
    assert record.last_attempted_at == retry.attempted_at


def test_an_insert_that_loses_the_race_for_its_id_says_the_id_is_taken() -> None:
    """Two deliveries INSERT the row of one id while a third transaction holds it uncommitted.

    When that transaction rolls back, one INSERT gets in. The other fails with a duplicate key,
    or, on MySQL and MariaDB, InnoDB may roll it back as a deadlock victim instead: either way it
    lost the race, and the claim decides on the row that won.
    """
    holding, release = threading.Event(), threading.Event()

    def row() -> TaskRecord:
        return TaskRecord(
            id="raced-for", task_path="tests.tasks.add", queue_name="default", priority=0,
            backend="default", status=TaskResultStatus.READY, args=[], kwargs={},
            enqueued_at=timezone.now(),
        )  # fmt: skip

    def hold() -> None:
        try:
            with transaction.atomic():
                row().save(force_insert=True)
                holding.set()
                release.wait(10)
                transaction.set_rollback(True)
        finally:
            connections.close_all()

    def race() -> bool:
        try:
            return store._insert("default", row())
        finally:
            connections.close_all()

    with ThreadPoolExecutor(3) as pool:
        holder = pool.submit(hold)
        assert holding.wait(10)
        racers = [pool.submit(race) for _ in range(2)]
        time.sleep(0.5)  # Both INSERTs wait on the holder's lock by now.
        release.set()
        holder.result(10)
        outcomes = sorted(racer.result(15) for racer in racers)

    assert outcomes == [False, True]
    assert TaskRecord.objects.filter(pk="raced-for").count() == 1
