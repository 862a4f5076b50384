"""The result store's prebuilt statements write what the ORM would, and refuse what they can't."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, transaction
from django.tasks import TaskResultStatus

from django_tasks_cloud_tasks.models import TaskRecord
from django_tasks_cloud_tasks.statements import Insert, Update

pytestmark = pytest.mark.django_db

ENQUEUED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
insert = Insert(TaskRecord)
finish = Update(TaskRecord, fields=["status", "return_value", "errors"], where=["id", "status"])


def record(task_id: str = "t-1") -> TaskRecord:
    return TaskRecord(
        id=task_id,
        task_path="tests.tasks.add",
        queue_name="default",
        backend="default",
        status=TaskResultStatus.READY,
        args=[1, {"nested": [2.5, None]}],
        kwargs={"text": "ünïcode ' \\\" quotes; DROP TABLE x; --"},
        enqueued_at=ENQUEUED,
    )


def test_an_inserted_row_reads_back_as_the_orm_would_have_written_it() -> None:
    written = record()
    insert.execute("default", written)

    read = TaskRecord.objects.get(pk="t-1")
    assert (read.args, read.kwargs, read.enqueued_at) == (written.args, written.kwargs, ENQUEUED)
    # Defaults the statement did not name are filled in as by Model.save().
    assert (read.errors, read.worker_ids, read.return_value, read.cloud_task_name) == (
        [],
        [],
        None,
        "",
    )
    assert not written._state.adding


def test_inserting_a_taken_id_raises_integrity_error_and_changes_nothing() -> None:
    insert.execute("default", record())
    duplicate = record()
    duplicate.task_path = "tests.tasks.other"

    with pytest.raises(IntegrityError), transaction.atomic():
        insert.execute("default", duplicate)

    assert TaskRecord.objects.get(pk="t-1").task_path == "tests.tasks.add"


def test_an_update_changes_only_the_rows_that_match_and_says_how_many() -> None:
    insert.execute("default", record("t-1"))
    insert.execute("default", record("t-2"))

    changed = finish.execute(
        "default", [TaskResultStatus.SUCCESSFUL, {"answer": 42}, []], where=["t-1", "READY"]
    )
    unchanged = finish.execute(
        "default", [TaskResultStatus.SUCCESSFUL, None, []], where=["t-1", "READY"]
    )

    assert (changed, unchanged) == (1, 0)
    assert TaskRecord.objects.get(pk="t-1").return_value == {"answer": 42}
    assert TaskRecord.objects.get(pk="t-2").status == TaskResultStatus.READY


def test_none_sets_null_but_cannot_be_a_condition() -> None:
    insert.execute("default", record())
    finish.execute("default", ["FAILED", None, [{"traceback": "..."}]], where=["t-1", "READY"])

    assert TaskRecord.objects.get(pk="t-1").return_value is None
    with pytest.raises(ValueError, match="None would match no row"):
        finish.execute("default", ["READY", None, []], where=["t-1", None])


def test_values_must_match_the_statement() -> None:
    with pytest.raises(ValueError, match="expected 3 values and 2 conditions"):
        finish.execute("default", ["FAILED"], where=["t-1", "READY"])
    with pytest.raises(TypeError, match="expected a TaskRecord"):
        insert.execute("default", object())  # type: ignore[arg-type]
