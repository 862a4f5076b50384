"""Rows that can no longer finish are found and run again: by ``cloudtasks_recover`` and the admin.

A READY row whose Cloud Tasks task is gone (its queue purged) and a RUNNING row whose attempt died
(lease lapsed) and whose task Cloud Tasks dropped would stay so for ever. Recovery creates a new
task for each, under a name derived from the row, so a second run creates nothing.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.tasks import TaskResultStatus
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import LOCATION, PROJECT, CloudTasks
from tests.tasks import recorder
from tests.test_enqueue_errors import queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = f"projects/{PROJECT}/locations/{LOCATION}/queues/default"
CHANGELIST = reverse("admin:django_tasks_cloud_tasks_taskrecord_changelist")


def recover() -> str:
    out = StringIO()
    call_command("cloudtasks_recover", "--older-than", "0", stdout=out)
    return out.getvalue()


def lapsed_row(task_id: str, cloud_task_name: str) -> TaskRecord:
    """A RUNNING row whose attempt died a minute ago: its lease lapsed, nothing renews it."""
    then = timezone.now() - timedelta(minutes=1)
    return TaskRecord.objects.create(
        id=task_id,
        task_path="tests.tasks.add",
        queue_name="default",
        backend="default",
        status=TaskResultStatus.RUNNING,
        args=[4, 5],
        enqueued_at=then,
        started_at=then,
        last_attempted_at=then,
        worker_ids=["killed-host:1"],
        lease_expires_at=then + timedelta(seconds=15),
        cloud_task_name=cloud_task_name,
    )


def test_a_ready_task_whose_queue_was_purged_is_created_again_and_runs_once(
    stored: CloudTasks,
) -> None:
    client = stored.client
    client.pause_queue(name=QUEUE)
    try:
        result = tasks.add.enqueue(1, 2)
        client.purge_queue(name=QUEUE)
    finally:
        client.resume_queue(name=QUEUE)
    assert queued_tasks(stored) == []
    assert TaskRecord.objects.get(pk=result.id).status == TaskResultStatus.READY

    first, second = recover(), recover()

    assert f"default lost {result.id}: created " in first
    assert "1 repaired, 0 failed." in first
    assert "0 repaired, 0 failed." in second
    assert recorder.wait_for(1)[0].args == (1, 2)
    assert stored.emulator.wait_until_idle()
    assert len(recorder.calls) == 1
    record = TaskRecord.objects.get(pk=result.id)
    assert record.status == TaskResultStatus.SUCCESSFUL
    assert record.cloud_task_name.startswith(f"{QUEUE}/tasks/{result.id}-r")


def test_a_row_a_delivery_claimed_while_cloud_tasks_was_asked_is_left_alone(
    stored: CloudTasks,
) -> None:
    # Recovery found the row READY; by the time it asks Cloud Tasks, the task has run and is gone.
    from django.tasks import default_task_backend

    from django_tasks_cloud_tasks import recovery

    client = stored.client
    client.pause_queue(name=QUEUE)
    try:
        result = tasks.add.enqueue(1, 2)
        found = TaskRecord.objects.get(pk=result.id)
    finally:
        client.resume_queue(name=QUEUE)
    assert found.status == TaskResultStatus.READY
    assert recorder.wait_for(1)[0].args == (1, 2)
    assert stored.emulator.wait_until_idle()

    lost = recovery.RecreateLostTasks()
    outcome = recovery._run(lost, default_task_backend, found, dry_run=False)

    assert outcome is None
    assert queued_tasks(stored) == []
    assert len(recorder.calls) == 1


def test_a_ready_task_that_cloud_tasks_still_has_is_left_alone(stored: CloudTasks) -> None:
    result = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2)
    # Due an hour ago as far as recovery can tell, yet still in Cloud Tasks.
    TaskRecord.objects.filter(pk=result.id).update(run_after=timezone.now() - timedelta(hours=1))

    assert "0 repaired, 0 failed." in recover()
    assert len(queued_tasks(stored)) == 1


def test_a_running_task_whose_attempt_died_and_whose_task_is_gone_runs_once_more(
    stored: CloudTasks,
) -> None:
    lapsed_row("dropped", cloud_task_name=f"{QUEUE}/tasks/dropped")

    output = recover()

    assert "default lapsed dropped: created " in output
    assert recorder.wait_for(1)[0].args == (4, 5)
    assert stored.emulator.wait_until_idle()
    assert "0 repaired, 0 failed." in recover()
    assert len(recorder.calls) == 1
    assert TaskRecord.objects.get(pk="dropped").status == TaskResultStatus.SUCCESSFUL


def test_a_running_task_whose_task_cloud_tasks_still_retries_is_left_to_that_retry(
    stored: CloudTasks,
) -> None:
    client = stored.client
    client.pause_queue(name=QUEUE)
    try:
        result = tasks.add.enqueue(4, 5)
        name = TaskRecord.objects.get(pk=result.id).cloud_task_name
        TaskRecord.objects.filter(pk=result.id).delete()
        lapsed_row(result.id, cloud_task_name=name)

        assert "0 repaired, 0 failed." in recover()
    finally:
        client.resume_queue(name=QUEUE)

    # The queue's own delivery takes the dead attempt's row over.
    assert recorder.wait_for(1)[0].args == (4, 5)
    assert stored.emulator.wait_until_idle()
    assert len(recorder.calls) == 1


def test_the_admin_lists_stuck_tasks_and_runs_them_again(
    stored: CloudTasks, admin_client: Client
) -> None:
    lapsed_row("stuck", cloud_task_name="")
    TaskRecord.objects.create(
        id="fine", task_path="tests.tasks.add", backend="default", status=TaskResultStatus.READY
    )
    page = admin_client.get(f"{CHANGELIST}?stuck=lapsed")
    assert [r.id for r in page.context["cl"].result_list] == ["stuck"]

    response = admin_client.post(
        CHANGELIST,
        {"action": "run_stuck_again", "_selected_action": ["stuck"]},
        follow=True,
    )

    notes = [str(message) for message in response.context["messages"]]
    assert notes == ["Created 1 task(s) in Cloud Tasks again, each for its own result."]
    assert recorder.wait_for(1)[0].args == (4, 5)
    assert stored.emulator.wait_until_idle()
    assert TaskRecord.objects.get(pk="stuck").status == TaskResultStatus.SUCCESSFUL


def test_run_again_leaves_tasks_that_can_still_finish(
    stored: CloudTasks, admin_client: Client
) -> None:
    fields: dict[str, Any] = {"task_path": "tests.tasks.add", "backend": "default"}
    TaskRecord.objects.create(id="done", status=TaskResultStatus.SUCCESSFUL, **fields)

    response = admin_client.post(
        CHANGELIST, {"action": "run_stuck_again", "_selected_action": ["done"]}, follow=True
    )

    notes = [str(message) for message in response.context["messages"]]
    assert notes == ["Left 1 task(s) that can still finish by themselves."]
    assert recorder.calls == []
