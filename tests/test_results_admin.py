"""The result store in the admin: lists, filters, search, a readable detail page, and actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.tasks import TaskResultStatus
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:django_tasks_cloud_tasks_taskrecord_changelist")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "tests/tasks.py", line 1, in add\n'
    "ConnectionError: <b>the payment service</b> is down\n"
)


def record(task_id: str, status: TaskResultStatus, **fields: Any) -> TaskRecord:
    now = timezone.now()
    values: dict[str, Any] = {
        "task_path": "tests.tasks.add",
        "queue_name": "default",
        "backend": "default",
        "status": status,
        "args": [2, 3],
        "enqueued_at": now,
        "started_at": now,
        "last_attempted_at": now,
        "worker_ids": ["host:1"],
    }
    if status == TaskResultStatus.FAILED:
        values["errors"] = [{"exception_class_path": "ConnectionError", "traceback": TRACEBACK}]
    if status in (TaskResultStatus.FAILED, TaskResultStatus.SUCCESSFUL):
        values["finished_at"] = now
    return TaskRecord.objects.create(id=task_id, **(values | fields))


@pytest.fixture
def records(cloud_tasks: CloudTasks) -> list[TaskRecord]:
    cloud_tasks.configure(STORE_RESULTS=True)
    return [
        record("failed-add", TaskResultStatus.FAILED),
        record(
            "succeeded-greet",
            TaskResultStatus.SUCCESSFUL,
            task_path="tests.tasks.greet",
            args=["Ada"],
            kwargs={"greeting": "Hi"},
            return_value="Hi, Ada!",
        ),
        record("ready-urgent", TaskResultStatus.READY, queue_name="high-priority"),
    ]


def change_page(task_id: str) -> str:
    return reverse("admin:django_tasks_cloud_tasks_taskrecord_change", args=[task_id])


def listed(client: Client, query: str = "") -> list[str]:
    response = client.get(f"{CHANGELIST}{query}")
    assert response.status_code == 200
    return [record.id for record in response.context["cl"].result_list]


def test_the_changelist_lists_results_newest_first(
    admin_client: Client, records: list[TaskRecord]
) -> None:
    assert listed(admin_client) == ["ready-urgent", "succeeded-greet", "failed-add"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status__exact=FAILED", ["failed-add"]),
        ("?queue_name__exact=high-priority", ["ready-urgent"]),
        ("?task_path__exact=tests.tasks.greet", ["succeeded-greet"]),
        ("?q=failed-", ["failed-add"]),
        ("?q=greet", ["succeeded-greet"]),
    ],
)
def test_filters_and_search(
    admin_client: Client, records: list[TaskRecord], query: str, expected: list[str]
) -> None:
    assert listed(admin_client, query) == expected


def test_the_detail_page_shows_arguments_return_value_and_tracebacks_readably(
    admin_client: Client, records: list[TaskRecord]
) -> None:
    succeeded = admin_client.get(change_page("succeeded-greet")).content.decode()
    failed = admin_client.get(change_page("failed-add")).content.decode()

    assert "<pre>[\n  &quot;Ada&quot;\n]</pre>" in succeeded
    assert "<pre>{\n  &quot;greeting&quot;: &quot;Hi&quot;\n}</pre>" in succeeded
    assert "<pre>&quot;Hi, Ada!&quot;</pre>" in succeeded
    assert "<pre>host:1</pre>" in succeeded
    # Pre-formatted and escaped: a traceback is text, never markup.
    assert "ConnectionError: &lt;b&gt;the payment service&lt;/b&gt; is down\n</pre>" in failed
    assert "<b>the payment service</b>" not in failed


def test_results_are_read_only(admin_client: Client, records: list[TaskRecord]) -> None:
    page = admin_client.get(change_page("failed-add")).content.decode()

    assert 'name="_save"' not in page
    assert 'name="status"' not in page
    assert admin_client.post(change_page("failed-add"), {"status": "SUCCESSFUL"}).status_code == 403
    assert (
        admin_client.get(reverse("admin:django_tasks_cloud_tasks_taskrecord_add")).status_code
        == 403
    )
    assert TaskRecord.objects.get(pk="failed-add").status == TaskResultStatus.FAILED


def test_enqueue_again_runs_a_new_task_with_the_same_arguments(
    admin_client: Client, cloud_tasks: CloudTasks, records: list[TaskRecord]
) -> None:
    response = admin_client.post(
        CHANGELIST,
        {"action": "enqueue_again", "_selected_action": ["failed-add", "succeeded-greet"]},
        follow=True,
    )

    notes = [str(message) for message in response.context["messages"]]
    assert notes == [
        "Enqueued 1 failed task(s) again, each as a new task with a new id.",
        "Skipped 1 task(s) that had not failed.",
    ]
    assert recorder.wait_for(1)[0].args == (2, 3)
    assert cloud_tasks.emulator.wait_until_idle()
    new = TaskRecord.objects.exclude(pk__in=[r.id for r in records]).get()
    assert new.to_task_result().return_value == 5
    assert TaskRecord.objects.get(pk="failed-add").status == TaskResultStatus.FAILED


def test_enqueue_again_reports_a_task_that_no_longer_exists(
    admin_client: Client, records: list[TaskRecord]
) -> None:
    record("renamed", TaskResultStatus.FAILED, task_path="tests.tasks.renamed_since")

    response = admin_client.post(
        CHANGELIST, {"action": "enqueue_again", "_selected_action": ["renamed"]}, follow=True
    )

    (note,) = [str(message) for message in response.context["messages"]]
    assert note.startswith("tests.tasks.renamed_since (renamed) not enqueued:")
    assert "is not a django.tasks.Task of this project" in note


def test_delete_selected(admin_client: Client, records: list[TaskRecord]) -> None:
    admin_client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": ["failed-add"], "post": "yes"},
    )

    assert sorted(TaskRecord.objects.values_list("pk", flat=True)) == [
        "ready-urgent",
        "succeeded-greet",
    ]


def test_viewing_does_not_allow_enqueueing_again(client: Client, records: list[TaskRecord]) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_taskrecord"))
    client.force_login(viewer)

    page = client.get(CHANGELIST)
    refused = client.post(
        CHANGELIST, {"action": "enqueue_again", "_selected_action": ["failed-add"]}
    )

    assert page.status_code == 200
    assert "enqueue_again" not in page.content.decode()
    assert refused.status_code == 200  # The changelist again, with "No action selected".
    assert tasks.add.get_result("failed-add").status == TaskResultStatus.FAILED
    assert not recorder.calls
