"""The emulator's queues and tasks, and the schedule that decides which attempt starts next.

One lock guards everything. gRPC handler threads, the scheduler thread, the dispatch workers and
the web page all come through here; each call holds the lock only for dictionary and heap work.

Every change of a queue goes through ``_put_queue``, and every change of a task through
``_save_task`` or ``_remove``, which is where an optional ``Journal`` hears of them: what is not
reported there is not saved across a restart.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from collections import deque

from google.api_core.exceptions import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from google.cloud import tasks_v2
from google.protobuf.field_mask_pb2 import FieldMask

from .attempts import NO_RESPONSE, answered, dispatch_headers, started
from .clock import timestamp
from .names import split_task_name
from .persistence import QUEUE_NAMES, RECORDS_KEPT, TASK_NAMES, Journal, TaskRow
from .queues import QueueSettings, configure, with_overrides
from .ratelimit import TokenBucket
from .records import DispatchRecord, Job, Phase, QueueEntry, QueueView, TaskEntry
from .retry import gives_up, retry_delay
from .tasks import NewTask, restored
from .tombstones import Tombstones

# Real messages, as recorded from Cloud Tasks by aertje/cloud-tasks-emulator's goldens.
QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue "
    "to initialize."
)
ENTITY_MISSING = "Requested entity was not found."
TASK_EXISTS = "Requested entity already exists"
QUEUE_EXISTS = "Queue already exists"
TASK_GONE = (
    "The task no longer exists, though a task with this name existed recently. The task either "
    "successfully completed or was deleted."
)
QUEUE_TOO_RECENT = (
    "The queue cannot be created because a queue with this name existed too recently."
)
# Fields UpdateQueue cannot change.
_OUTPUT_ONLY = frozenset({"name", "state", "purge_time"})


def _is_queue_path(path: str) -> bool:
    return bool(FieldMask(paths=[path]).IsValidForDescriptor(tasks_v2.Queue.pb().DESCRIPTOR))


class Store:
    def __init__(
        self,
        *,
        tombstone_seconds: float,
        queue_reuse_seconds: float,
        journal: Journal | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the scheduler waits here
        self._idle = threading.Condition(self._lock)  # wait_until_idle waits here
        self._queues: dict[str, QueueEntry] = {}
        self._heap: list[tuple[float, int, TaskEntry]] = []
        self._seq = itertools.count(1)
        self._forced: list[Job] = []  # RunTask attempts, already started
        self._tombstones = Tombstones(tombstone_seconds)
        self._queue_tombstones = Tombstones(queue_reuse_seconds)
        self._records: deque[DispatchRecord] = deque(maxlen=RECORDS_KEPT)
        self._in_flight = 0
        self._epoch = 0
        self._closed = False
        self._journal = journal
        if journal is not None:
            self._restore(journal)

    def _restore(self, journal: Journal) -> None:
        saved = journal.load()
        with self._lock:
            for data in saved.queues:
                queue = tasks_v2.Queue.deserialize(data)
                # configure() marks its argument RUNNING; the saved state must stay.
                self._put_queue(queue.name, queue, configure(tasks_v2.Queue(queue)), save=False)
            for row in saved.tasks:
                queue_entry = self._queues.get(row.queue)
                if queue_entry is None:
                    continue
                new = restored(tasks_v2.Task.deserialize(row.task))
                _, task_id = split_task_name(new.task.name)
                entry = TaskEntry(
                    task_id,
                    queue_entry,
                    new.task,
                    new.target,
                    retry=new.retry,
                    execution_count=row.execution_count,
                    previous_response=row.previous_response,
                    first_dispatch=row.first_dispatch,
                )
                queue_entry.tasks[task_id] = entry
                # An attempt under way at the stop starts again: its ETA has passed.
                self._schedule(entry, new.eta)
            now = time.time()
            for kind, name, expiry in saved.tombstones:
                if expiry > now:
                    names = self._tombstones if kind == TASK_NAMES else self._queue_tombstones
                    names.restore(name, expiry)
            self._records.extend(saved.records)

    # Queues

    def create_queue(self, queue: tasks_v2.Queue) -> tasks_v2.Queue:
        """Store ``queue``, a fresh message the store now owns, with its defaults filled in."""
        settings = configure(queue)
        with self._lock:
            if queue.name in self._queues:
                raise AlreadyExists(QUEUE_EXISTS)
            if self._queue_tombstones.contains(queue.name, time.time()):
                raise FailedPrecondition(QUEUE_TOO_RECENT)
            self._put_queue(queue.name, queue, settings)
        return queue

    def update_queue(self, queue: tasks_v2.Queue, update_mask: FieldMask) -> tasks_v2.Queue:
        """UpdateQueue: change the fields in ``update_mask`` (every field if it is empty).

        As in Cloud Tasks, a queue that does not exist yet is created. The queue keeps its state
        (a paused queue stays paused) and its tasks; a changed rate limit starts a full token
        bucket.
        """
        paths = list(update_mask.paths)
        unknown = [p for p in paths if p in _OUTPUT_ONLY or not _is_queue_path(p)]
        if unknown:
            raise InvalidArgument(f"Invalid update_mask paths: {', '.join(unknown)}.")
        with self._lock:
            entry = self._queues.get(queue.name)
            if entry is None:
                if self._queue_tombstones.contains(queue.name, time.time()):
                    raise FailedPrecondition(QUEUE_TOO_RECENT)
                created = tasks_v2.Queue(queue)
                return self._put_queue(queue.name, created, configure(created)).queue
            if paths:
                updated = tasks_v2.Queue(entry.queue)
                FieldMask(paths=paths).MergeMessage(
                    tasks_v2.Queue.pb(queue),
                    tasks_v2.Queue.pb(updated),
                    replace_message_field=True,
                )
            else:  # Every field is replaced; what the request leaves out gets its default.
                updated = tasks_v2.Queue(queue, purge_time=entry.queue.purge_time)
            state = entry.queue.state
            settings = configure(updated)  # marks the queue RUNNING...
            tasks_v2.Queue.pb(updated).state = state  # ...which an update must not do.
            return self._put_queue(queue.name, updated, settings).queue

    def has_queue(self, name: str) -> bool:
        with self._lock:
            return name in self._queues

    def get_queue(self, name: str) -> tasks_v2.Queue:
        with self._lock:
            return self._queue(name).queue

    def list_queues(self, location: str) -> list[tasks_v2.Queue]:
        with self._lock:
            prefix = f"{location}/queues/"
            names = sorted(n for n in self._queues if n.startswith(prefix))
            return [self._queues[n].queue for n in names]

    def delete_queue(self, name: str) -> None:
        with self._lock:
            entry = self._queue(name, missing=ENTITY_MISSING)
            del self._queues[name]
            for task in entry.tasks.values():
                task.phase = Phase.DONE
                if self._journal is not None:
                    self._journal.task(f"{name}/tasks/{task.task_id}", None)
            expiry = self._queue_tombstones.add(name, time.time())
            if self._journal is not None:
                self._journal.queue(name, None)
                self._journal.tombstone(QUEUE_NAMES, name, expiry)
            self._notify_if_idle()

    def set_paused(self, name: str, *, paused: bool) -> tasks_v2.Queue:
        state = tasks_v2.Queue.State.PAUSED if paused else tasks_v2.Queue.State.RUNNING
        with self._lock:
            entry = self._queue(name)
            return self._put_queue(name, tasks_v2.Queue(entry.queue, state=state)).queue

    def purge_queue(self, name: str) -> tasks_v2.Queue:
        now = time.time()
        with self._lock:
            entry = self._queue(name)
            for task in list(entry.tasks.values()):
                self._remove(task, now)
            queue = tasks_v2.Queue(entry.queue, purge_time=timestamp(now))
            self._notify_if_idle()
            return self._put_queue(name, queue).queue

    def _put_queue(
        self,
        name: str,
        queue: tasks_v2.Queue,
        settings: QueueSettings | None = None,
        *,
        save: bool = True,
    ) -> QueueEntry:
        """Add or change a queue: every queue change (create, update, pause, resume, purge) ends
        here. ``queue`` is the new snapshot; ``settings``, its limits when they are new or
        changed. The caller holds the lock.
        """
        entry = self._queues.get(name)
        if entry is None:
            if settings is None:
                raise ValueError("A new queue needs its settings.")
            entry = QueueEntry(queue, settings, TokenBucket(settings.rate, settings.burst))
            self._queues[name] = entry
        else:
            entry.queue = queue
            if settings is not None and settings != entry.settings:
                entry.settings = settings
                entry.bucket = TokenBucket(settings.rate, settings.burst)
        if save and self._journal is not None:
            self._journal.queue(name, tasks_v2.Queue.serialize(queue))
        if entry.running and entry.ready:
            self._work.notify()
        return entry

    # Tasks

    def create_task(self, queue_name: str, new: NewTask) -> tasks_v2.Task:
        """Store ``new.task``, naming it if the request did not."""
        now = time.time()
        with self._lock:
            queue = self._queue(queue_name)
            # Checked against the queue's settings now; applied with its settings of the day.
            with_overrides(queue.settings, new.retry)
            task_id = new.task_id
            if task_id is None:
                task_id = self._fresh_id(queue, now)
                new.task.name = f"{queue_name}/tasks/{task_id}"
            elif task_id in queue.tasks or self._tombstones.contains(new.task.name, now):
                raise AlreadyExists(TASK_EXISTS)
            entry = TaskEntry(task_id, queue, new.task, new.target, retry=new.retry)
            queue.tasks[task_id] = entry
            self._schedule(entry, new.eta)
            self._save_task(entry)
            return new.task

    def get_task(self, name: str) -> tasks_v2.Task:
        with self._lock:
            return self._task(name).task

    def list_tasks(self, queue_name: str) -> list[tasks_v2.Task]:
        with self._lock:
            tasks = self._queue(queue_name).tasks
            return [tasks[task_id].task for task_id in sorted(tasks)]

    def delete_task(self, name: str) -> None:
        with self._lock:
            self._remove(self._task(name), time.time())
            self._notify_if_idle()

    def run_task(self, name: str) -> tasks_v2.Task:
        """Start an attempt now, whatever the schedule, pause state and rate limits say.

        A task already in flight is returned as it is: a second concurrent attempt of one task
        would make its counters meaningless.
        """
        with self._lock:
            entry = self._task(name)
            if entry.phase is not Phase.IN_FLIGHT:
                self._forced.append(self._start(entry, time.time()))
                self._work.notify()
            return entry.task

    # Dispatch

    def next_jobs(self) -> list[Job]:
        """Block until attempts are due and allowed to start; ``[]`` once the store is closed."""
        with self._lock:
            while not self._closed:
                now = time.time()
                jobs = self._take_jobs(now)
                if jobs:
                    return jobs
                self._work.wait(self._time_to_next_job(now))
            return []

    def finish(
        self, job: Job, record: DispatchRecord, *, retry_after: float | None, timed_out: bool
    ) -> None:
        """Settle an attempt: delete the task, reschedule it, or give up on it."""
        now = time.time()
        entry = job.entry
        queue = entry.queue
        with self._lock:
            self._in_flight -= 1
            queue.in_flight -= 1
            if job.epoch == self._epoch:
                self._records.append(record)
                if self._journal is not None:
                    self._journal.record(record)
            if entry.phase is Phase.IN_FLIGHT:
                self._settle(entry, record.status, retry_after, timed_out, now)
            if queue.ready:
                self._work.notify()
            self._notify_if_idle()

    def records(self) -> list[DispatchRecord]:
        with self._lock:
            return list(self._records)

    def overview(self, *, tasks: int, records: int) -> tuple[list[QueueView], list[DispatchRecord]]:
        """Every queue with its first ``tasks`` tasks by schedule time, and the latest
        ``records`` attempts, newest first: what the web page shows."""
        with self._lock:
            queues = []
            for name in sorted(self._queues):
                entry = self._queues[name]
                waiting = heapq.nsmallest(
                    tasks, entry.tasks.values(), key=lambda t: t.task.schedule_time
                )
                queues.append(
                    QueueView(
                        queue=entry.queue,
                        in_flight=entry.in_flight,
                        tasks=[(t.task, t.phase is Phase.IN_FLIGHT) for t in waiting],
                        task_count=len(entry.tasks),
                    )
                )
            latest = list(itertools.islice(reversed(self._records), records))
            return queues, latest

    def wait_until_idle(self, timeout: float) -> bool:
        """Whether, within ``timeout``, no task is left (even in a paused queue) or in flight."""
        with self._lock:
            self._idle.wait_for(lambda: self._closed or self._is_idle(), timeout)
            return not self._closed and self._is_idle()

    def reset(self) -> None:
        """Forget all tasks, tombstones and records; keep the queues."""
        with self._lock:
            self._epoch += 1
            for queue in self._queues.values():
                for entry in queue.tasks.values():
                    entry.phase = Phase.DONE
                queue.tasks.clear()
                queue.ready.clear()
            for job in self._forced:
                job.entry.queue.in_flight -= 1
                self._in_flight -= 1
            self._forced.clear()
            self._heap.clear()
            self._tombstones.clear()
            self._records.clear()
            if self._journal is not None:
                self._journal.reset()
            self._notify_if_idle()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._idle.notify_all()

    # Internals; the caller holds the lock.

    def _queue(self, name: str, missing: str = QUEUE_MISSING) -> QueueEntry:
        entry = self._queues.get(name)
        if entry is None:
            raise NotFound(missing)
        return entry

    def _task(self, name: str) -> TaskEntry:
        queue_name, task_id = split_task_name(name)
        entry = self._queue(queue_name).tasks.get(task_id)
        if entry is None:
            gone = self._tombstones.contains(name, time.time())
            raise NotFound(TASK_GONE if gone else ENTITY_MISSING)
        return entry

    def _fresh_id(self, queue: QueueEntry, now: float) -> str:
        # Real generated ids are long decimal strings too.
        while True:
            task_id = str(secrets.randbits(64))
            name = f"{queue.queue.name}/tasks/{task_id}"
            if task_id not in queue.tasks and not self._tombstones.contains(name, now):
                return task_id

    def _schedule(self, entry: TaskEntry, eta: float) -> None:
        seq = next(self._seq)
        entry.phase = Phase.SCHEDULED
        entry.heap_seq = seq
        heapq.heappush(self._heap, (eta, seq, entry))
        if self._heap[0][2] is entry:
            self._work.notify()

    def _remove(self, entry: TaskEntry, now: float) -> None:
        """Delete a task and reserve its name for the tombstone window."""
        entry.phase = Phase.DONE
        queue = entry.queue
        del queue.tasks[entry.task_id]
        name = f"{queue.queue.name}/tasks/{entry.task_id}"
        expiry = self._tombstones.add(name, now)
        if self._journal is not None:
            self._journal.task(name, None)
            self._journal.tombstone(TASK_NAMES, name, expiry)

    def _save_task(self, entry: TaskEntry) -> None:
        """Report a new or changed task to the journal, if there is one."""
        if self._journal is not None:
            self._journal.task(
                entry.task.name,
                TaskRow(
                    queue=entry.queue.queue.name,
                    task=tasks_v2.Task.serialize(entry.task),
                    execution_count=entry.execution_count,
                    previous_response=entry.previous_response,
                    first_dispatch=entry.first_dispatch,
                ),
            )

    def _take_jobs(self, now: float) -> list[Job]:
        jobs = self._forced
        self._forced = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, entry = heapq.heappop(heap)
            if entry.phase is Phase.SCHEDULED and entry.heap_seq == seq:
                entry.phase = Phase.READY
                entry.queue.ready.append(entry)
        for queue in self._queues.values():
            ready = queue.ready
            while ready and self._can_dispatch(queue):
                entry = ready[0]
                if entry.phase is Phase.READY:
                    if not queue.bucket.take(now):
                        break
                    jobs.append(self._start(entry, now))
                ready.popleft()
        return jobs

    def _time_to_next_job(self, now: float) -> float | None:
        """Seconds until the next ETA or token refill that could start an attempt; None: never."""
        wake = self._heap[0][0] if self._heap else None
        for queue in self._queues.values():
            if queue.ready and self._can_dispatch(queue):
                refill = queue.bucket.next_token_at(now)
                wake = refill if wake is None else min(wake, refill)
        return None if wake is None else max(wake - now, 0.0)

    def _can_dispatch(self, queue: QueueEntry) -> bool:
        return queue.running and queue.in_flight < queue.settings.concurrency

    def _start(self, entry: TaskEntry, now: float) -> Job:
        job = Job(entry, self._epoch, entry.task.dispatch_count, dispatch_headers(entry))
        entry.task = started(entry.task, now)
        if job.attempt == 0:
            entry.first_dispatch = now
        entry.phase = Phase.IN_FLIGHT
        entry.queue.in_flight += 1
        self._in_flight += 1
        self._save_task(entry)
        return job

    def _settle(
        self,
        entry: TaskEntry,
        status: int,
        retry_after: float | None,
        timed_out: bool,
        now: float,
    ) -> None:
        try:
            settings = with_overrides(entry.queue.settings, entry.retry)
        except InvalidArgument:
            # The queue changed since the task was checked: its own settings still hold.
            settings = entry.queue.settings
        attempts = entry.task.dispatch_count
        if 200 <= status < 300 or gives_up(
            attempts,
            now - entry.first_dispatch,
            max_attempts=settings.max_attempts,
            max_retry_duration=settings.max_retry_duration,
        ):
            self._remove(entry, now)
            return
        delay = retry_delay(
            attempts,
            min_backoff=settings.min_backoff,
            max_backoff=settings.max_backoff,
            max_doublings=settings.max_doublings,
        )
        if retry_after is not None:
            delay = max(delay, retry_after)
        if status == NO_RESPONSE:
            entry.previous_response = None
        else:
            entry.previous_response = status
            # HTTP targets' ExecutionCount leaves out 5xx answers, as recorded from Cloud Tasks.
            if status < 500:
                entry.execution_count += 1
        next_eta = now + delay
        entry.task = answered(
            entry.task, status=status, timed_out=timed_out, now=now, next_eta=next_eta
        )
        self._schedule(entry, next_eta)
        self._save_task(entry)

    def _is_idle(self) -> bool:
        return self._in_flight == 0 and not any(q.tasks for q in self._queues.values())

    def _notify_if_idle(self) -> None:
        if self._is_idle():
            self._idle.notify_all()
