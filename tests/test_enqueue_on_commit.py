"""ENQUEUE_ON_COMMIT: a task enqueued in a transaction exists if and only if it commits; the READY
row is the outbox that ``cloudtasks_recover`` turns into exactly one task after a crash."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_enqueue_errors import queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


@pytest.mark.parametrize("store", [True, False], ids=["with-store", "without-store"])
def test_a_rolled_back_transaction_never_runs_its_task(
    cloud_tasks: CloudTasks, store: bool
) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=store)
    enqueued = []

    def enqueue_then_fail() -> None:
        with transaction.atomic():
            enqueued.append(tasks.add.enqueue(1, 2))
            raise Rollback

    with pytest.raises(Rollback):
        enqueue_then_fail()
    (result,) = enqueued

    assert queued_tasks(cloud_tasks) == []
    assert not TaskRecord.objects.filter(pk=result.id).exists()
    assert recorder.calls == []


@pytest.mark.parametrize("store", [True, False], ids=["with-store", "without-store"])
def test_a_committed_transaction_runs_its_task_once(cloud_tasks: CloudTasks, store: bool) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=store)

    with transaction.atomic():
        result = tasks.add.enqueue(3, 4)
        assert queued_tasks(cloud_tasks) == []  # Not before the commit.

    assert recorder.wait_for(1)[0].args == (3, 4)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(recorder.calls) == 1
    if store:
        record = TaskRecord.objects.get(pk=result.id)
        assert record.status == "SUCCESSFUL"
        assert record.cloud_task_name.endswith(f"/tasks/{result.id}")


def test_outside_a_transaction_the_task_is_created_at_once(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True)

    tasks.add.enqueue(5, 6)

    assert len(queued_tasks(cloud_tasks)) + len(recorder.calls) >= 1


def test_a_crash_between_commit_and_creation_is_recovered_into_one_run(
    cloud_tasks: CloudTasks, caplog: pytest.LogCaptureFixture
) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=True, ENQUEUE_DEADLINE=1)
    # Cloud Tasks is out of reach when the transaction commits, as if the process had died.
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=None)

    with caplog.at_level(logging.ERROR), transaction.atomic():
        result = tasks.add.enqueue(7, 8)

    assert "cloudtasks_recover" in caplog.text
    record = TaskRecord.objects.get(pk=result.id)
    assert (record.status, record.cloud_task_name) == ("READY", "")
    cloud_tasks.emulator.clear_faults()

    out = StringIO()
    call_command("cloudtasks_recover", "--older-than", "0", stdout=out)
    call_command("cloudtasks_recover", "--older-than", "0", stdout=out)  # Nothing left to do.

    assert "1 repaired, 0 failed." in out.getvalue()
    assert "0 repaired, 0 failed." in out.getvalue()
    assert recorder.wait_for(1)[0].args == (7, 8)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(recorder.calls) == 1
    assert TaskRecord.objects.get(pk=result.id).status == "SUCCESSFUL"


def test_recovery_of_a_task_that_was_created_but_not_noted_runs_it_once(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=True, ENQUEUE_DEADLINE=1)
    # Created, but the answer comes after the whole deadline: the row never learns the name.
    cloud_tasks.emulator.inject_fault("CreateTask", delay=3)
    # Held, so that recovery finds the row still READY.
    cloud_tasks.create_queue("urgent")
    cloud_tasks.hold()
    with transaction.atomic():
        result = tasks.add.using(queue_name="urgent").enqueue(9, 9)
    assert TaskRecord.objects.get(pk=result.id).cloud_task_name == ""

    call_command("cloudtasks_recover", "--older-than", "0", stdout=StringIO())

    # Cloud Tasks answered ALREADY_EXISTS: the task it has is noted, and no second one made.
    assert TaskRecord.objects.get(pk=result.id).cloud_task_name.endswith(f"/tasks/{result.id}")
    assert len(queued_tasks(cloud_tasks, "urgent")) == 1
    cloud_tasks.release()
    assert recorder.wait_for(1)[0].args == (9, 9)
    assert cloud_tasks.emulator.wait_until_idle()
    assert len(recorder.calls) == 1


def test_recovery_leaves_young_rows_to_their_enqueue(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=True, ENQUEUE_DEADLINE=1)
    cloud_tasks.emulator.inject_fault("CreateTask", status="UNAVAILABLE", times=None)
    with transaction.atomic():
        tasks.add.enqueue(1, 1)
    cloud_tasks.emulator.clear_faults()
    out = StringIO()

    call_command("cloudtasks_recover", "--dry-run", stdout=out)

    assert "0 would be repaired (dry run)." in out.getvalue()
    assert queued_tasks(cloud_tasks) == []


def test_an_unknown_database_alias_is_refused_naming_the_setting(cloud_tasks: CloudTasks) -> None:
    from django.core.exceptions import ImproperlyConfigured

    cloud_tasks.configure(ENQUEUE_ON_COMMIT="replica")

    with pytest.raises(ImproperlyConfigured, match="ENQUEUE_ON_COMMIT 'replica'"):
        tasks.add.enqueue(1, 1)


def test_a_bulk_enqueue_in_a_transaction_waits_for_the_commit(cloud_tasks: CloudTasks) -> None:
    from django_tasks_cloud_tasks import Call, enqueue_many

    cloud_tasks.configure(ENQUEUE_ON_COMMIT=True, STORE_RESULTS=True)

    with transaction.atomic():
        results = enqueue_many(tasks.add, [Call(i, 0) for i in range(3)])
        assert queued_tasks(cloud_tasks) == []
        assert TaskRecord.objects.filter(cloud_task_name="").count() == 3

    calls = recorder.wait_for(3)
    assert sorted(c.args for c in calls) == [(0, 0), (1, 0), (2, 0)]
    assert cloud_tasks.emulator.wait_until_idle()
    names = TaskRecord.objects.filter(pk__in=[r.id for r in results])
    assert all(name.endswith(pk) for pk, name in names.values_list("pk", "cloud_task_name"))


def test_recovery_reports_a_row_it_cannot_repair_and_exits_with_status_1(
    cloud_tasks: CloudTasks,
) -> None:
    from django.core.management.base import CommandError

    cloud_tasks.configure(STORE_RESULTS=True)
    TaskRecord.objects.create(
        id="orphan",
        task_path="tests.tasks.no_such_task",
        queue_name="default",
        backend="default",
        enqueued_at=timezone.now() - timedelta(hours=1),
    )
    out = StringIO()

    with pytest.raises(CommandError, match="1 rows could not be repaired") as excinfo:
        call_command("cloudtasks_recover", stdout=out)

    assert excinfo.value.returncode == 1
    assert "default uncreated orphan: failed: " in out.getvalue()
    assert "tests.tasks.no_such_task" in out.getvalue()
    assert queued_tasks(cloud_tasks) == []


def test_a_dry_run_lists_what_recovery_would_create_and_creates_nothing(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(STORE_RESULTS=True)
    TaskRecord.objects.create(
        id="pending",
        task_path="tests.tasks.add",
        queue_name="default",
        backend="default",
        args=[1, 2],
        enqueued_at=timezone.now() - timedelta(hours=1),
    )
    out = StringIO()

    call_command("cloudtasks_recover", "--dry-run", stdout=out)

    assert "default uncreated pending: would repair (dry run)" in out.getvalue()
    assert "1 would be repaired (dry run)." in out.getvalue()
    assert queued_tasks(cloud_tasks) == []
    assert TaskRecord.objects.get(pk="pending").cloud_task_name == ""
