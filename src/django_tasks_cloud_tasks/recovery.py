"""Recovery: what the result store shows went wrong between Django and Cloud Tasks, put right.

One ``Repair`` per kind of trouble: it finds the rows that show it and repairs one row at a time,
so that a run can be limited, reported and interrupted, and the ``cloudtasks_recover`` command
(run on a schedule) runs every repair in ``REPAIRS``. A later kind of trouble is a new ``Repair``
in that list, not a new command. Every repair must be safe to run twice and concurrently with
itself: recovery creates tasks under the name fixed at enqueue, so Cloud Tasks refuses a second
one (``ALREADY_EXISTS``), which counts as done.

The repairs, each for a row older than the grace period (so that no enqueue or delivery is still
at work on it):

- ``uncreated``: a READY row that has no Cloud Tasks task name is in the outbox. Its transaction
  committed (or there would be no row), but the process did not get to create the task, or did not
  live to note it did. Its task is created under the name fixed at enqueue.
- ``lost``: a READY row whose Cloud Tasks task no longer exists (GetTask answers NOT_FOUND): the
  queue was purged or deleted, or an emulator restarted without its state. Nothing would ever run
  it.
- ``lapsed``: a RUNNING row whose lease lapsed (its attempt died) and whose Cloud Tasks task no
  longer exists, or was never noted: Cloud Tasks dropped it (its attempts ran out while a retry
  was refused) or lost it. A task that Cloud Tasks still has is left to its retry, which takes the
  row over by itself.

``lost`` and ``lapsed`` create a new task, since Cloud Tasks keeps a task's name for up to a day
after the task is gone. Its name is derived from the row's id and the task name it replaces, so
two recoveries of the same row create one task, and a row whose replacement is lost too gets
another. The delivery claims the same row: the payload carries the row's id.

A repair confirms each row it finds before it touches it (``needs_repair``, which may ask Cloud
Tasks), so a dry run reports only rows that would be repaired, and then checks that the row is still
as it was found: a task that has just run is gone from Cloud Tasks too, but its delivery claimed
the row first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from django.db import router
from django.db.models import Q, QuerySet
from django.tasks import TaskResultStatus, task_backends
from django.utils import timezone

from . import client, store
from .backend import CloudTasksBackend
from .config import MAX_DISPATCH_DEADLINE
from .models import TaskRecord

# Longer than an enqueue usually takes (ENQUEUE_DEADLINE defaults to 10 s), so that recovery
# does not race an enqueue still at work: harmless (names deduplicate), but wasted work.
DEFAULT_GRACE = timedelta(minutes=1)


class Repair(Protocol):
    """One kind of trouble the store can show, and how to put a row of it right."""

    name: str
    description: str

    def find(self, backend: CloudTasksBackend, older_than: timedelta) -> QuerySet[TaskRecord]:
        """The rows of ``backend`` that may show the trouble and are older than ``older_than``."""
        ...

    def needs_repair(self, backend: CloudTasksBackend, record: TaskRecord) -> bool:
        """Whether a row ``find`` returned does show the trouble (it may ask Cloud Tasks)."""
        ...

    def repair(self, backend: CloudTasksBackend, record: TaskRecord) -> str:
        """Put ``record`` right; a few words on what was done. Raises if it could not be."""
        ...


class CreateUncreatedTasks:
    name = "uncreated"
    description = "READY rows whose task Cloud Tasks never confirmed (the enqueue outbox)"

    def find(self, backend: CloudTasksBackend, older_than: timedelta) -> QuerySet[TaskRecord]:
        return TaskRecord.objects.using(router.db_for_write(TaskRecord)).filter(
            backend=backend.alias,
            status=TaskResultStatus.READY,
            cloud_task_name="",
            enqueued_at__lt=timezone.now() - older_than,
        )

    def needs_repair(self, backend: CloudTasksBackend, record: TaskRecord) -> bool:
        return True

    def repair(self, backend: CloudTasksBackend, record: TaskRecord) -> str:
        return f"created {_create(backend, record)}"


class RecreateLostTasks:
    name = "lost"
    description = "READY rows whose task Cloud Tasks no longer has (a queue purged or deleted)"

    def find(self, backend: CloudTasksBackend, older_than: timedelta) -> QuerySet[TaskRecord]:
        now = timezone.now()
        return (
            TaskRecord.objects.using(router.db_for_write(TaskRecord))
            .filter(
                backend=backend.alias,
                status=TaskResultStatus.READY,
                enqueued_at__lt=now - older_than,
            )
            .exclude(cloud_task_name="")
            # A task due later is waiting, not lost; it is checked once it is due.
            .filter(Q(run_after=None) | Q(run_after__lt=now - older_than))
        )

    def needs_repair(self, backend: CloudTasksBackend, record: TaskRecord) -> bool:
        return not client.task_exists(backend.config, record.cloud_task_name)

    def repair(self, backend: CloudTasksBackend, record: TaskRecord) -> str:
        return f"created {_create(backend, record, replacing=record.cloud_task_name)}"


class TakeOverLapsedLeases:
    name = "lapsed"
    description = "RUNNING rows whose attempt died and whose task Cloud Tasks no longer has"

    def find(self, backend: CloudTasksBackend, older_than: timedelta) -> QuerySet[TaskRecord]:
        now = timezone.now()
        return TaskRecord.objects.using(router.db_for_write(TaskRecord)).filter(
            # Rows claimed before leases existed: once no dispatch deadline can still run.
            Q(lease_expires_at__lt=now - older_than)
            | Q(lease_expires_at=None, last_attempted_at__lt=now - MAX_DISPATCH_DEADLINE),
            backend=backend.alias,
            status=TaskResultStatus.RUNNING,
        )

    def needs_repair(self, backend: CloudTasksBackend, record: TaskRecord) -> bool:
        name = record.cloud_task_name
        return not name or not client.task_exists(backend.config, name)

    def repair(self, backend: CloudTasksBackend, record: TaskRecord) -> str:
        return f"created {_create(backend, record, replacing=record.cloud_task_name)}"


def _create(backend: CloudTasksBackend, record: TaskRecord, *, replacing: str | None = None) -> str:
    """Create the task of ``record``, under its first name, or under a name derived from the
    one it replaces; note the name on the row."""
    result = record.to_task_result()
    prepared = backend.prepare(
        result.task,
        result.args,
        result.kwargs,
        result_id=record.id,
        enqueued_at=record.enqueued_at,
        cloud_task_id=None if replacing is None else _replacement_id(record.id, replacing),
    )
    name = client.create_task(
        backend.config, prepared.queue_id, prepared.request, prepared.result.id
    )
    store.record_created(record.id, name)
    return name


def _replacement_id(result_id: str, replacing: str) -> str:
    # Task ids allow [A-Za-z0-9_-] and 500 characters; result ids have at most 128.
    digest = hashlib.sha256(f"{result_id}\n{replacing}".encode()).hexdigest()[:16]
    return f"{result_id}-r{digest}"


REPAIRS: list[Repair] = [CreateUncreatedTasks(), RecreateLostTasks(), TakeOverLapsedLeases()]


@dataclass(frozen=True, slots=True)
class Outcome:
    repair: str
    backend: str
    result_id: str
    done: bool
    detail: str


def recover(
    *,
    aliases: list[str] | None = None,
    older_than: timedelta = DEFAULT_GRACE,
    limit: int | None = None,
    dry_run: bool = False,
) -> Iterator[Outcome]:
    """Run every repair on the rows of the given backends (default: every Cloud Tasks backend
    with the result store), at most ``limit`` rows per repair and backend."""
    for backend in _backends(aliases):
        for repair in REPAIRS:
            records = repair.find(backend, older_than).order_by("enqueued_at")
            found = 0
            for record in records.iterator():
                if limit is not None and found >= limit:
                    break
                outcome = _run(repair, backend, record, dry_run=dry_run)
                if outcome is not None:
                    found += 1
                    yield outcome


def recover_rows(records: Iterable[TaskRecord]) -> Iterator[Outcome]:
    """Run the repair that each of ``records`` needs, if any, however young the row: what the
    admin's "run again" action does. Rows that need none are left alone."""
    for record in records:
        backend: Any = task_backends[record.backend]
        if not isinstance(backend, CloudTasksBackend):
            continue
        for repair in REPAIRS:
            if repair.find(backend, timedelta(0)).filter(pk=record.pk).exists():
                outcome = _run(repair, backend, record, dry_run=False)
                if outcome is not None:
                    yield outcome
                break


def _run(
    repair: Repair, backend: CloudTasksBackend, record: TaskRecord, *, dry_run: bool
) -> Outcome | None:
    """Repair one row; None if it turns out not to need it."""
    try:
        if not repair.needs_repair(backend, record) or not _unchanged(record):
            return None
        if dry_run:
            return Outcome(repair.name, backend.alias, record.id, False, "would repair (dry run)")
        detail = repair.repair(backend, record)
    except Exception as exc:  # reported per row; the next row gets its turn
        return Outcome(repair.name, backend.alias, record.id, False, f"failed: {exc}")
    return Outcome(repair.name, backend.alias, record.id, True, detail)


def _unchanged(record: TaskRecord) -> bool:
    """Whether the row is still as ``find`` saw it.

    A delivery may have claimed it while Cloud Tasks was asked: a task that has just run is gone
    from Cloud Tasks too, but its row was claimed before that, so a row still unchanged after the
    answer is one no delivery took.
    """
    attempted = (
        Q(last_attempted_at__isnull=True)
        if record.last_attempted_at is None
        else Q(last_attempted_at=record.last_attempted_at)
    )
    return (
        TaskRecord.objects.using(router.db_for_write(TaskRecord))
        .filter(attempted, pk=record.pk, status=record.status)
        .filter(cloud_task_name=record.cloud_task_name)
        .exists()
    )


def _backends(aliases: list[str] | None) -> list[CloudTasksBackend]:
    from django.conf import settings

    names = aliases or list(settings.TASKS)
    backends: list[Any] = [task_backends[alias] for alias in names]
    return [
        b
        for b in backends
        if isinstance(b, CloudTasksBackend) and (aliases or b.config.store_results)
    ]
