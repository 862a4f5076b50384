"""Crash-safe execution: a running attempt's lease, its renewal, and the takeover of a dead one.

With STORE_RESULTS, the attempt that claims a task holds a lease on its row and renews it while
the task runs; a delivery that finds the lease lapsed takes the task over at once. Everything runs
the real path: the emulator over gRPC, deliveries over HTTP to a live server (WSGI and ASGI).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.db import OperationalError, connection
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_tasks_cloud_tasks import CloudTasksBackend, client, execution, leases, store
from django_tasks_cloud_tasks.execution import Attempt, worker_id
from django_tasks_cloud_tasks.models import TaskRecord
from django_tasks_cloud_tasks.payload import decode
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_emulator import wait_until
from tests.test_results import body, deliver

pytestmark = pytest.mark.django_db(transaction=True)

DEAD_WORKER = "killed-host:1"


def running_row(task_id: str, lease_expires_at: Any, **fields: Any) -> TaskRecord:
    """A RUNNING row as an attempt's claim leaves it: the attempt started a moment ago."""
    now = timezone.now()
    values: dict[str, Any] = {
        "task_path": "tests.tasks.add",
        "queue_name": "default",
        "backend": "default",
        "status": TaskResultStatus.RUNNING,
        "args": [2, 3],
        "enqueued_at": now,
        "started_at": now,
        "last_attempted_at": now,
        "worker_ids": [DEAD_WORKER],
        "lease_expires_at": lease_expires_at,
    }
    return TaskRecord.objects.create(id=task_id, **(values | fields))


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
def test_a_task_whose_attempt_died_is_taken_over_at_once_and_runs_once(
    stored: CloudTasks, server: str, request: pytest.FixtureRequest
) -> None:
    if server == "asgi":
        stored.handler_host = request.getfixturevalue("asgi_server")[0]
        stored.configure(STORE_RESULTS=True)
    # A worker claimed the task a moment ago (far within the 10-minute dispatch deadline) and was
    # killed: its lease lapsed, as nothing renews it any more.
    running_row("taken-over", lease_expires_at=timezone.now() - timedelta(seconds=1))

    # Cloud Tasks' retry of that task, through the emulator.
    backend = tasks.add.get_backend()
    assert isinstance(backend, CloudTasksBackend)
    prepared = backend.prepare(tasks.add, [2, 3], {}, result_id="taken-over")
    client.create_task(backend.config, prepared.queue_id, prepared.request, prepared.result.id)

    assert recorder.wait_for(1)[0].args == (2, 3)
    assert stored.emulator.wait_until_idle()
    assert len(recorder.named("add")) == 1
    result = tasks.add.get_result("taken-over")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids[-1] == worker_id()


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
def test_a_delivery_that_finds_a_live_lease_is_answered_409_and_does_not_run(
    stored: CloudTasks, server: str, request: pytest.FixtureRequest
) -> None:
    if server == "asgi":
        stored.handler_host = request.getfixturevalue("asgi_server")[0]
        stored.configure(STORE_RESULTS=True)
    # Started longer ago than the dispatch deadline, but its attempt still renews its lease: it
    # is alive, and a second attempt must not run beside it.
    long_ago = timezone.now() - timedelta(minutes=20)
    running_row(
        "alive",
        lease_expires_at=timezone.now() + timedelta(seconds=10),
        started_at=long_ago,
        last_attempted_at=long_ago,
    )

    response = deliver(stored, body("alive"), retries=3)

    assert response.status_code == 409
    assert response.json()["status"] == "running"
    assert 9 <= int(response.headers["Retry-After"]) <= 10
    assert recorder.calls == []
    assert TaskRecord.objects.get(pk="alive").worker_ids == [DEAD_WORKER]


@pytest.mark.parametrize("server", ["wsgi", "asgi"])
def test_renewal_keeps_a_long_tasks_lease_and_refuses_other_deliveries_meanwhile(
    stored: CloudTasks, server: str, request: pytest.FixtureRequest
) -> None:
    if server == "asgi":
        stored.handler_host = request.getfixturevalue("asgi_server")[0]
    stored.configure(STORE_RESULTS=True, LEASE=1, LEASE_RENEWAL_INTERVAL=0.2)
    document = body("long", task_path="tests.tasks.slow", args=[60], takes_context=True)
    answers: list[requests.Response] = []
    first = threading.Thread(target=lambda: answers.append(deliver(stored, document)))
    first.start()
    try:
        recorder.wait_for(1)
        claimed = TaskRecord.objects.get(pk="long")
        assert claimed.last_attempted_at is not None

        def renewed_well_past_the_first_lease() -> bool:
            """the lease was renewed to more than 2 s after the claim (the lease is 1 s)"""
            lease = TaskRecord.objects.get(pk="long").lease_expires_at
            assert claimed.last_attempted_at is not None
            return lease is not None and lease > claimed.last_attempted_at + timedelta(seconds=2)

        assert wait_until(renewed_well_past_the_first_lease, 30)
        duplicate = deliver(stored, document, retries=1)
    finally:
        tasks.release_slow.set()
        first.join(30)

    assert duplicate.status_code == 409
    assert [a.status_code for a in answers] == [200]
    assert len(recorder.named("slow")) == 1
    record = TaskRecord.objects.get(pk="long")
    assert record.status == TaskResultStatus.SUCCESSFUL
    assert record.last_attempted_at == claimed.last_attempted_at


def test_a_renewal_that_finds_its_row_taken_over_logs_an_error_and_stops(
    stored: CloudTasks, caplog: pytest.LogCaptureFixture
) -> None:
    row = running_row("lost-lease", lease_expires_at=timezone.now() + timedelta(seconds=1))
    assert row.last_attempted_at is not None
    lease = leases.Lease("lost-lease", row.last_attempted_at, "default", timedelta(seconds=15), 5)
    with leases.held(lease), caplog.at_level(logging.ERROR, logger="django_tasks_cloud_tasks"):
        leases.renew_now()
        assert TaskRecord.objects.get(
            pk="lost-lease"
        ).lease_expires_at > timezone.now() + timedelta(seconds=10)
        # Another delivery took the row over (this attempt could not renew for a whole lease).
        TaskRecord.objects.filter(pk="lost-lease").update(last_attempted_at=timezone.now())
        leases.renew_now()
        leases.renew_now()

    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "another delivery took over" in line.getMessage()
    assert "both may be running" in line.getMessage()


def test_an_outcome_whose_write_loses_its_connection_is_written_on_a_new_one(
    stored: CloudTasks,
) -> None:
    failures = []

    def drop_first_outcome(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        # The database restarting as the task finishes: the outcome's UPDATE meets a dead
        # connection once.
        if sql.startswith("UPDATE") and "finished_at" in sql and not failures:
            failures.append(sql)
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    payload = decode(json.dumps(body("restarted")).encode())
    claimed = store.claim(payload, Attempt(1), timedelta(minutes=10))
    assert isinstance(claimed, execution.Claim)
    result = execution.start(CloudTasksBackend, tasks.add, payload, Attempt(1), claimed)
    outcome = execution.run(CloudTasksBackend, result)
    with connection.execute_wrapper(drop_first_outcome):
        store.record_finished(outcome.result, claimed)

    assert failures
    assert TaskRecord.objects.get(pk="restarted").status == TaskResultStatus.SUCCESSFUL
