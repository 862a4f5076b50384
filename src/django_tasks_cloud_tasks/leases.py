"""Leases: a running attempt keeps its claim on its result row alive while its task runs.

With ``STORE_RESULTS``, a delivery claims the task's row before it runs the task and gives the
claim a lease (``LEASE``, 15 s by default). While the task runs the lease is renewed every
``LEASE_RENEWAL_INTERVAL``; a delivery that finds a RUNNING row whose lease has lapsed knows that
the attempt holding it is dead (its instance was killed, its process crashed) and takes the task
over at once, instead of waiting for the dispatch deadline.

Decision: one daemon thread per process renews the leases of every attempt running in the process,
with one UPDATE per interval (per database and lease length; batches of ``_BATCH`` rows), not a
thread or a write per task. What the execute view pays is a dict insert and removal per task,
measured in ``benchmarks/run.py``. The thread starts with the first lease and sleeps while none
is held.

A renewal matches a row by its id and the ``last_attempted_at`` that the attempt's claim wrote, so
an attempt renews only its own claim. A row that no longer matches while its attempt still runs
has been taken over by another delivery. That needs every renewal to fail for a whole lease (the
database unreachable that long, the process stalled): the two attempts may then run at the same
time. It is logged as an error, the attempt stops renewing, and its outcome is not stored (the
outcome's write has the same condition; see ``store.record_finished``).

Process-wide state: the held leases and the thread. A forked child starts with neither
(``os.register_at_fork``), since threads do not survive a fork.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import batched

from django.db import DatabaseError, connections
from django.db.models import Q
from django.tasks import TaskResultStatus
from django.utils import timezone

logger = logging.getLogger(__name__)

# Rows per renewing UPDATE: bounds the statement's size when many async tasks run at once.
_BATCH = 100


@dataclass(frozen=True, slots=True)
class Lease:
    """The claim of one running attempt: its row, and how the claim identifies it."""

    task_id: str
    attempted_at: datetime  # The row's last_attempted_at, as this attempt's claim wrote it.
    database: str
    length: timedelta
    interval: float  # Seconds between renewals.


class _Renewer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._held: dict[tuple[str, datetime], Lease] = {}
        self._thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.task_id, lease.attempted_at] = lease
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cloudtasks-lease-renewer", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop((lease.task_id, lease.attempted_at), None)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    # Idle: hold no database connection meanwhile (nor keep a test database in
                    # use), and sleep until the next lease.
                    connections.close_all()
                while not self._held:
                    self._wake.wait()
                interval = min(lease.interval for lease in self._held.values())
            # Not under the lock: a new lease must not wait for a renewal to finish.
            time.sleep(interval)
            try:
                self.renew()
            except Exception:  # the thread must outlive any one renewal, or no lease is renewed
                logger.exception("Renewing leases failed; trying again in the next interval.")

    def renew(self) -> None:
        """Extend every held lease by its length, from now: one UPDATE per group and batch."""
        groups: dict[tuple[str, timedelta], list[Lease]] = {}
        for lease in self.held():
            groups.setdefault((lease.database, lease.length), []).append(lease)
        for (database, length), leases in groups.items():
            for batch in batched(leases, _BATCH):
                try:
                    renewed = _extend(database, batch, timezone.now() + length)
                    if renewed < len(batch):
                        self._lost(database, batch)
                except DatabaseError:
                    # The next renewal tries again on a new connection; the lease holds meanwhile.
                    logger.warning(
                        "Could not renew the leases of %d running task(s); retrying in the next "
                        "interval. If this lasts longer than LEASE, other deliveries may take "
                        "them over while they still run.",
                        len(batch),
                        exc_info=True,
                    )
                    connections[database].close()

    def _lost(self, database: str, batch: tuple[Lease, ...]) -> None:
        """Of the leases a renewal missed, tell those taken over from those that just finished."""
        from .models import TaskRecord

        held = set(self.held())
        still_held = [lease for lease in batch if lease in held]
        rows = dict(
            TaskRecord.objects.using(database)
            .filter(pk__in=[lease.task_id for lease in still_held])
            .values_list("pk", "last_attempted_at")
        )
        for lease in still_held:
            attempted_at = rows.get(lease.task_id, lease.attempted_at)
            if attempted_at == lease.attempted_at:
                continue  # Finished between the snapshot and the UPDATE, or pruned.
            self.discard(lease)
            logger.error(
                "Task %s: another delivery took over its result row while this attempt (claimed "
                "at %s) still runs; both may be running now, and this attempt's outcome will not "
                "be stored. Its lease could not be renewed for longer than LEASE: check the "
                "database's availability, and raise LEASE if the process stalls that long.",
                lease.task_id,
                lease.attempted_at.isoformat(),
                extra={"task_id": lease.task_id},
            )

    def _forget(self) -> None:
        """In a forked child: the parent's leases and thread are not this process's."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._held = {}
        self._thread = None


def _extend(database: str, leases: tuple[Lease, ...], until: datetime) -> int:
    from .models import TaskRecord

    condition = Q()
    for lease in leases:
        condition |= Q(pk=lease.task_id, last_attempted_at=lease.attempted_at)
    return (
        TaskRecord.objects.using(database)
        .filter(condition, status=TaskResultStatus.RUNNING)
        .update(lease_expires_at=until)
    )


_renewer = _Renewer()
os.register_at_fork(after_in_child=_renewer._forget)


@contextmanager
def held(lease: Lease) -> Iterator[None]:
    """Keep ``lease`` renewed while the block runs (the task's run and its outcome's write)."""
    _renewer.add(lease)
    try:
        yield
    finally:
        _renewer.discard(lease)


def renew_now() -> None:
    """Renew every lease held in this process at once (for tests and benchmarks)."""
    _renewer.renew()
