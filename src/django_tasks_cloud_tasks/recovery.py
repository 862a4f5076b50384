"""Recovery: what the result store shows went wrong between Django and Cloud Tasks, put right.

One ``Repair`` per kind of trouble: it finds the rows that show it and repairs one row at a time,
so that a run can be limited, reported and interrupted, and the ``cloudtasks_recover`` command
(run on a schedule) runs every repair in ``REPAIRS``. A later kind of trouble is a new ``Repair``
in that list, not a new command. Every repair must be safe to run twice and concurrently with
itself: recovery creates tasks under the name fixed at enqueue, so Cloud Tasks refuses a second
one (``ALREADY_EXISTS``), which counts as done.

Today's repair: a READY row that has no Cloud Tasks task name is in the outbox. Its transaction
committed (or there would be no row), but the process did not get to create the task, or did not
live to note it did. The row is older than the grace period, so no enqueue is still at work on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from django.db import router
from django.db.models import QuerySet
from django.tasks import TaskResultStatus, task_backends
from django.utils import timezone

from . import client, store
from .backend import CloudTasksBackend
from .models import TaskRecord

# Longer than an enqueue usually takes (ENQUEUE_DEADLINE defaults to 10 s), so that recovery
# does not race an enqueue still at work: harmless (names deduplicate), but wasted work.
DEFAULT_GRACE = timedelta(minutes=1)


class Repair(Protocol):
    """One kind of trouble the store can show, and how to put a row of it right."""

    name: str
    description: str

    def find(self, backend: CloudTasksBackend, older_than: timedelta) -> QuerySet[TaskRecord]:
        """The rows of ``backend`` that show the trouble and are older than ``older_than``."""
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

    def repair(self, backend: CloudTasksBackend, record: TaskRecord) -> str:
        result = record.to_task_result()
        prepared = backend.prepare(
            result.task,
            result.args,
            result.kwargs,
            result_id=record.id,
            enqueued_at=record.enqueued_at,
        )
        name = client.create_task(
            backend.config, prepared.queue_id, prepared.request, prepared.result.id
        )
        store.record_created(record.id, name)
        return f"created {name}"


REPAIRS: list[Repair] = [CreateUncreatedTasks()]


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
            for record in records[:limit] if limit is not None else records:
                yield _run(repair, backend, record, dry_run=dry_run)


def _run(
    repair: Repair, backend: CloudTasksBackend, record: TaskRecord, *, dry_run: bool
) -> Outcome:
    if dry_run:
        return Outcome(repair.name, backend.alias, record.id, False, "would repair (dry run)")
    try:
        detail = repair.repair(backend, record)
    except Exception as exc:  # reported per row; the next row gets its turn
        return Outcome(repair.name, backend.alias, record.id, False, f"failed: {exc}")
    return Outcome(repair.name, backend.alias, record.id, True, detail)


def _backends(aliases: list[str] | None) -> list[CloudTasksBackend]:
    from django.conf import settings

    names = aliases or list(settings.TASKS)
    backends: list[Any] = [task_backends[alias] for alias in names]
    return [
        b
        for b in backends
        if isinstance(b, CloudTasksBackend) and (aliases or b.config.store_results)
    ]
