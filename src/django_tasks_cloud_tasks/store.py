"""The optional result store (``STORE_RESULTS``): one ``TaskRecord`` row per task result.

Cloud Tasks keeps no results, so with the store on the backend writes a READY row when it enqueues
(one INSERT), and each delivery claims the row before it runs the task and records the outcome
after (two conditional UPDATEs). Claiming is what makes at-least-once delivery safe: a delivery of
a task that already succeeded is acknowledged without running it again, and one that arrives while
another attempt is still running (its lease renewed, see ``leases.py``) is told to come back later.
A RUNNING row whose lease has lapsed belongs to a dead attempt: the delivery takes it over.

The row can be missing when a delivery arrives: the enqueuing transaction has not committed yet,
or the enqueue's write comes after the task ran. The delivery then inserts the row itself, and the
enqueue's write only adds the Cloud Tasks task name to it.

Only the backend and the view import this module, and only with the store on: it imports the
models, which need a ready app registry and a database.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import QuerySet
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.utils import timezone

from .config import DEFAULT_LEASE, CloudTasksConfig
from .execution import Attempt, Claim
from .leases import Lease
from .models import TaskRecord
from .payload import Payload
from .statements import Insert, Update

logger = logging.getLogger(__name__)

# A claim that keeps losing races (each loss means another delivery changed the row) gives up
# after this many rounds and answers as if the task were running; Cloud Tasks retries it.
_CLAIM_ROUNDS = 3

# An outcome whose write fails for want of a connection (the database restarting) is tried again
# for this long: lost, it would leave the row RUNNING, and the task to run again once its lease
# lapses. A restart takes a second or two.
_OUTCOME_RETRY_SECONDS = 10.0

# MySQL's and MariaDB's ER_LOCK_DEADLOCK: InnoDB can pick one of several concurrent INSERTs of the
# same key as a deadlock victim, rolling it back, where other databases report a duplicate key.
_MYSQL_DEADLOCK = 1213

# The writes of a usual task, prebuilt (see statements.py): the row written at enqueue, the claim
# of a row that is still READY, and the outcome of the attempt that claimed it.
_INSERT = Insert(TaskRecord)
_CLAIM_READY = Update(
    TaskRecord,
    fields=["status", "started_at", "last_attempted_at", "worker_ids", "lease_expires_at"],
    where=["id", "status"],
)
_RECORD_OUTCOME = Update(
    TaskRecord,
    fields=["status", "finished_at", "return_value", "errors"],
    where=["id", "last_attempted_at"],
)


@dataclass(frozen=True, slots=True)
class AlreadySucceeded:
    """The task succeeded in an earlier delivery: acknowledge this one, do not run it again."""

    task_id: str


@dataclass(frozen=True, slots=True)
class StillRunning:
    """Another attempt runs the task (its lease is live, or it is within its dispatch deadline):
    retry later."""

    task_id: str
    retry_after: int  # Seconds until that attempt's lease (or deadline) lapses.


def record_enqueued(result: TaskResult[..., Any], cloud_task_name: str = "") -> None:
    """Write the READY row of a task: one INSERT.

    With ``cloud_task_name`` the task is in Cloud Tasks already. Without it the row is the outbox
    of a task to be created after the enqueuing transaction commits (``record_created`` then
    adds the name); ``cloudtasks_recover`` creates the task of a row left without one.

    If a delivery already created the row, only the Cloud Tasks task name is added: the row
    holds the delivery's newer state.
    """
    record = _ready_record(result, cloud_task_name)
    database = router.db_for_write(TaskRecord)
    if not _insert(database, record) and cloud_task_name:
        record_created(result.id, cloud_task_name)


def record_created(result_id: str, cloud_task_name: str) -> None:
    """Note on a row that Cloud Tasks now has its task: it leaves the outbox."""
    TaskRecord.objects.using(router.db_for_write(TaskRecord)).filter(pk=result_id).update(
        cloud_task_name=cloud_task_name
    )


def record_enqueued_many(results: Sequence[TaskResult[..., Any]], names: Sequence[str]) -> None:
    """``record_enqueued`` for many tasks: one INSERT for the rows no delivery wrote first."""
    database = router.db_for_write(TaskRecord)
    records = TaskRecord.objects.using(database)
    with transaction.atomic(using=database):
        records.bulk_create(
            [_ready_record(r, name) for r, name in zip(results, names, strict=True)],
            ignore_conflicts=True,
        )
        # Rows a delivery inserted first lack the name (rare: the task ran within milliseconds).
        named = {r.id: name for r, name in zip(results, names, strict=True) if name}
        if named:
            unnamed = records.filter(pk__in=list(named), cloud_task_name="")
            for result_id in unnamed.values_list("pk", flat=True):
                records.filter(pk=result_id).update(cloud_task_name=named[result_id])


def _ready_record(result: TaskResult[..., Any], cloud_task_name: str) -> TaskRecord:
    task = result.task
    return TaskRecord(
        id=result.id,
        task_path=task.module_path,
        queue_name=task.queue_name,
        priority=task.priority,
        backend=result.backend,
        status=TaskResultStatus.READY,
        args=result.args,
        kwargs=result.kwargs,
        enqueued_at=result.enqueued_at,
        run_after=task.run_after,
        cloud_task_name=cloud_task_name,
    )


def claim(
    payload: Payload, attempt: Attempt, deadline: timedelta, lease: timedelta = DEFAULT_LEASE
) -> Claim | AlreadySucceeded | StillRunning:
    """Mark the task RUNNING for this attempt, unless it succeeded or another attempt runs it.

    Atomic without locks. A READY row is claimed by an UPDATE that requires it to be READY still.
    Any other row is read, then updated only if it still has the status and
    ``last_attempted_at`` that were read. Every claim sets a new ``last_attempted_at`` (and every
    outcome a new status), so of two concurrent deliveries exactly one UPDATE matches a row. A
    missing row is inserted; if a concurrent delivery or the enqueue's write inserted it first,
    the IntegrityError sends this claim round again, to decide on the row that won.

    A claim holds for ``lease`` unless its attempt renews it (``held_lease``). A RUNNING row
    whose lease has lapsed is claimed again at once: its attempt is dead. A RUNNING row without
    a lease (claimed before leases existed) is claimed again once ``deadline``, the dispatch
    deadline, has passed since its attempt started: Cloud Tasks has given up on it by then.
    """
    database = router.db_for_write(TaskRecord)
    claimed = _claim_ready(database, payload, attempt, lease)
    if claimed is not None:
        return claimed
    # Read where the claim writes: a replica's stale row would only lose every round.
    records = TaskRecord.objects.using(database)
    for _ in range(_CLAIM_ROUNDS):
        record = (
            records.filter(pk=payload.task_id)
            .only(
                "status",
                "started_at",
                "last_attempted_at",
                "worker_ids",
                "errors",
                "lease_expires_at",
            )
            .first()
        )
        now = timezone.now()
        if record is None:
            claimed = _insert_running(payload, attempt, now, lease)
        else:
            verdict = _verdict(record, now, deadline)
            if verdict is not None:
                return verdict
            claimed = _update_running(records, record, attempt, now, lease)
            if claimed is not None and _lapsed(record, now):
                logger.warning(
                    "Task %s: took over from attempt %d, whose lease lapsed at %s (its instance "
                    "or process is gone); running it again.",
                    payload.task_id,
                    len(record.worker_ids),
                    record.lease_expires_at.isoformat() if record.lease_expires_at else "-",
                    extra={"task_id": payload.task_id, "attempt": attempt.number},
                )
        if claimed is not None:
            return claimed
    return StillRunning(payload.task_id, retry_after=1)


async def aclaim(
    payload: Payload, attempt: Attempt, deadline: timedelta, lease: timedelta = DEFAULT_LEASE
) -> Claim | AlreadySucceeded | StillRunning:
    # One thread hop for the whole exchange, rather than one per query with the async ORM.
    return await sync_to_async(claim)(payload, attempt, deadline, lease)


def held_lease(payload: Payload, claimed: Claim, config: CloudTasksConfig) -> Lease:
    """The lease of the attempt that ``claimed`` the task, to keep renewed while it runs."""
    return Lease(
        task_id=payload.task_id,
        attempted_at=claimed.attempted_at,
        database=router.db_for_write(TaskRecord),
        length=config.lease,
        interval=config.lease_renewal_interval.total_seconds(),
    )


def _claim_ready(
    database: str, payload: Payload, attempt: Attempt, lease: timedelta
) -> Claim | None:
    """Claim the row if it is still READY, as enqueued: one statement, and no history to read.

    A READY row has never been claimed, so no attempt of its task ran. This is the path of
    almost every first delivery; any other row is read first (``claim``).
    """
    claimed = Claim.first(attempt, timezone.now())
    updated = _CLAIM_READY.execute(
        database,
        [
            TaskResultStatus.RUNNING,
            claimed.started_at,
            claimed.attempted_at,
            list(claimed.worker_ids),
            claimed.attempted_at + lease,
        ],
        where=[payload.task_id, TaskResultStatus.READY],
    )
    return claimed if updated else None


def _verdict(
    record: TaskRecord, now: datetime, deadline: timedelta
) -> AlreadySucceeded | StillRunning | None:
    if record.status == TaskResultStatus.SUCCESSFUL:
        return AlreadySucceeded(record.id)
    if record.status != TaskResultStatus.RUNNING:
        return None
    if record.lease_expires_at is not None:
        held_until = record.lease_expires_at
    elif record.last_attempted_at is not None:
        held_until = record.last_attempted_at + deadline
    else:
        return None
    remaining = (held_until - now).total_seconds()
    if remaining > 0:
        return StillRunning(record.id, retry_after=math.ceil(remaining))
    return None


def _lapsed(record: TaskRecord, now: datetime) -> bool:
    """Whether ``record`` was RUNNING under a lease that lapsed: its attempt died."""
    return (
        record.status == TaskResultStatus.RUNNING
        and record.lease_expires_at is not None
        and record.lease_expires_at <= now
    )


def _update_running(
    records: QuerySet[TaskRecord],
    record: TaskRecord,
    attempt: Attempt,
    now: datetime,
    lease: timedelta,
) -> Claim | None:
    claimed = Claim(
        started_at=record.started_at or now,
        attempted_at=now,
        worker_ids=attempt.worker_ids(record.worker_ids),
        errors=tuple(TaskError(**error) for error in record.errors),
    )
    updated = records.filter(
        pk=record.pk, status=record.status, last_attempted_at=record.last_attempted_at
    ).update(
        status=TaskResultStatus.RUNNING,
        started_at=claimed.started_at,
        last_attempted_at=now,
        finished_at=None,
        return_value=None,
        worker_ids=list(claimed.worker_ids),
        lease_expires_at=now + lease,
    )
    return claimed if updated else None


def _insert_running(
    payload: Payload, attempt: Attempt, now: datetime, lease: timedelta
) -> Claim | None:
    claimed = Claim.first(attempt, now)
    record = TaskRecord(
        id=payload.task_id,
        task_path=payload.task_path,
        queue_name=payload.queue_name,
        priority=payload.priority,
        backend=payload.backend,
        status=TaskResultStatus.RUNNING,
        args=payload.args,
        kwargs=payload.kwargs,
        worker_ids=list(claimed.worker_ids),
        enqueued_at=payload.enqueued_at,
        started_at=now,
        last_attempted_at=now,
        lease_expires_at=now + lease,
    )
    return claimed if _insert(router.db_for_write(TaskRecord), record) else None


def _insert(database: str, record: TaskRecord) -> bool:
    """INSERT the row, or return False if its id is taken; the caller's transaction goes on.

    Outside a transaction, an INSERT that InnoDB rolled back as a deadlock victim also returns
    False: it lost the same race, to a concurrent INSERT of the same id, and the caller decides
    on the row that won. Inside one, the deadlock has rolled the whole transaction back, so it
    is raised.
    """
    connection = transaction.get_connection(database)
    try:
        if connection.in_atomic_block:
            # PostgreSQL aborts a transaction at its first error: confine this one to a savepoint.
            with transaction.atomic(using=database):
                _INSERT.execute(database, record)
        else:
            _INSERT.execute(database, record)
    except IntegrityError:
        return False
    except OperationalError as exc:
        deadlock = connection.vendor == "mysql" and exc.args[:1] == (_MYSQL_DEADLOCK,)
        if deadlock and not connection.in_atomic_block:
            return False
        raise
    return True


def record_finished(result: TaskResult[..., Any], claimed: Claim) -> None:
    """Write the outcome of the attempt that ``claimed`` the task: one statement.

    An attempt whose lease lapsed may have been claimed over by a retry; the row is the retry's
    then, and this late outcome is only logged. If the database refuses the outcome (a value it
    cannot store), the task is recorded FAILED with the reason instead. If even that fails (the
    database is down), the row keeps this attempt's claim, whose lease lapses once the attempt
    stops renewing it: a later delivery may claim it again, and ``prune_task_results`` counts it
    as abandoned after the dispatch deadline. The task has run either way, and answering Cloud
    Tasks with an error would only make it run again.
    """
    database = router.db_for_write(TaskRecord)
    succeeded = result.status == TaskResultStatus.SUCCESSFUL
    errors = [
        {"exception_class_path": e.exception_class_path, "traceback": e.traceback}
        for e in result.errors
    ]
    values = [result.status, result.finished_at, result.return_value if succeeded else None, errors]
    where = [result.id, claimed.attempted_at]
    try:
        updated = _write_outcome(database, values, where)
    except DatabaseError as exc:
        logger.warning(
            "Task %s finished (%s) but the database refused its outcome; recording it FAILED.",
            result.id,
            result.status,
            exc_info=True,
        )
        # Earlier attempts' errors are kept, this one's is replaced by why it cannot be stored.
        errors = [*errors[: len(claimed.errors)], _unstorable(result.status, exc)]
        values = [TaskResultStatus.FAILED, result.finished_at or timezone.now(), None, errors]
        try:
            updated = _write_outcome(database, values, where)
        except DatabaseError:
            logger.exception(
                "Task %s finished (%s) but no outcome could be stored; its row stays RUNNING "
                "until its lease lapses and a retry or cloudtasks_recover takes it over.",
                result.id,
                result.status,
            )
            return
    if not updated:
        logger.warning(
            "Task %s finished (%s) after a later attempt claimed it; its outcome is not stored.",
            result.id,
            result.status,
        )


def _write_outcome(database: str, values: list[Any], where: list[Any]) -> int:
    """The outcome's UPDATE, tried again on a new connection while the database is unreachable."""
    give_up_at = time.monotonic() + _OUTCOME_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return _RECORD_OUTCOME.execute(database, values, where=where)
        except (OperationalError, InterfaceError):
            connection = connections[database]
            if connection.in_atomic_block or time.monotonic() + delay > give_up_at:
                raise
            logger.warning("Could not write an outcome; trying again.", exc_info=True)
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _unstorable(status: str, exc: DatabaseError) -> dict[str, str]:
    kind = type(exc)
    return {
        "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
        "traceback": f"The task finished ({status}), but the database refused its outcome "
        f"({kind.__qualname__}); the server's log has the details.\n",
    }


async def arecord_finished(result: TaskResult[..., Any], claimed: Claim) -> None:
    await sync_to_async(record_finished)(result, claimed)


def get_result(backend: str, result_id: str) -> TaskResult[..., Any]:
    try:
        record = TaskRecord.objects.get(pk=result_id, backend=backend)
    except TaskRecord.DoesNotExist:
        raise _does_not_exist(backend, result_id) from None
    return _task_result(record)


async def aget_result(backend: str, result_id: str) -> TaskResult[..., Any]:
    try:
        record = await TaskRecord.objects.aget(pk=result_id, backend=backend)
    except TaskRecord.DoesNotExist:
        raise _does_not_exist(backend, result_id) from None
    return _task_result(record)


def _task_result(record: TaskRecord) -> TaskResult[..., Any]:
    try:
        return record.to_task_result()
    except InvalidTask as exc:
        # Django documents TaskResultDoesNotExist as get_result's one way to say "no such result".
        raise TaskResultDoesNotExist(str(exc)) from exc


def _does_not_exist(backend: str, result_id: str) -> TaskResultDoesNotExist:
    return TaskResultDoesNotExist(
        f"No result {result_id!r} in the result store of TASKS[{backend!r}]: it was never "
        "enqueued with STORE_RESULTS on, or it has been pruned."
    )
