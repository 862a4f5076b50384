"""``manage.py prune_task_results``: finished results older than an age go, in batches."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_tasks_cloud_tasks.management.commands.prune_task_results import parse_age
from django_tasks_cloud_tasks.models import TaskRecord

pytestmark = pytest.mark.django_db(transaction=True)

SUCCESSFUL, FAILED = TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED
RUNNING, READY = TaskResultStatus.RUNNING, TaskResultStatus.READY


@pytest.fixture
def results() -> None:
    """Five results finished 8 days ago, two an hour ago, and two that have not finished."""
    now = timezone.now()
    rows = [
        *((f"old-ok-{i}", SUCCESSFUL, now - timedelta(days=8)) for i in range(3)),
        *((f"old-failed-{i}", FAILED, now - timedelta(days=8)) for i in range(2)),
        ("new-ok", SUCCESSFUL, now - timedelta(hours=1)),
        ("new-failed", FAILED, now - timedelta(hours=1)),
        ("running", RUNNING, None),
        ("ready", READY, None),
    ]
    TaskRecord.objects.bulk_create(
        TaskRecord(id=task_id, task_path="tests.tasks.add", status=status, finished_at=finished)
        for task_id, status, finished in rows
    )


def prune(*args: str) -> str:
    out = StringIO()
    call_command("prune_task_results", *args, stdout=out)
    return out.getvalue()


def remaining() -> list[str]:
    return sorted(TaskRecord.objects.values_list("pk", flat=True))


def test_deletes_finished_results_older_than_the_age_in_batches(results: None) -> None:
    output = prune("--older-than", "7d", "--batch-size", "2", "--verbosity", "2")

    assert remaining() == ["new-failed", "new-ok", "ready", "running"]
    assert output.splitlines()[:3] == [
        "Deleted a batch of 2 (total 2).",
        "Deleted a batch of 2 (total 4).",
        "Deleted a batch of 1 (total 5).",
    ]
    assert output.splitlines()[-1].startswith(
        "Deleted 5 SUCCESSFUL or FAILED task results finished before "
    )


def test_status_limits_what_is_deleted(results: None) -> None:
    output = prune("--older-than", "30m", "--status", "FAILED")

    assert remaining() == ["new-ok", "old-ok-0", "old-ok-1", "old-ok-2", "ready", "running"]
    assert output.startswith("Deleted 3 FAILED task results")


def test_status_is_repeatable(results: None) -> None:
    prune("--older-than", "0", "--status", "FAILED", "--status", "SUCCESSFUL")

    assert remaining() == ["ready", "running"]


def test_dry_run_counts_and_deletes_nothing(results: None) -> None:
    output = prune("--older-than", "7d", "--dry-run")

    assert output.startswith("Would delete 5 SUCCESSFUL or FAILED task results finished before")
    assert output.rstrip().endswith("(dry run).")
    assert len(remaining()) == 9


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("3600", timedelta(hours=1)),
    ],
)
def test_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "a week"], "is not an age"),
        (["--older-than=-1d"], "is not an age"),
        (["--older-than", "1d", "--batch-size", "0"], "at least 1"),
        (["--older-than", "1d", "--status", "RUNNING"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        prune(*args)


def test_running_results_abandoned_long_ago_are_pruned_with_the_failed_ones() -> None:
    """A RUNNING row whose outcome could never be written does not stay forever."""
    now = timezone.now()
    TaskRecord.objects.bulk_create(
        TaskRecord(id=task_id, task_path="tests.tasks.add", status=RUNNING, last_attempted_at=at)
        for task_id, at in [
            ("abandoned", now - timedelta(days=8)),
            ("within-the-age", now - timedelta(hours=1)),
            ("within-a-dispatch-deadline", now - timedelta(minutes=5)),
        ]
    )

    prune("--older-than", "10m", "--status", "SUCCESSFUL")
    assert "abandoned" in remaining()

    output = prune("--older-than", "2h")

    assert remaining() == ["within-a-dispatch-deadline", "within-the-age"]
    assert "abandoned RUNNING ones" in output
