"""The emulator's bookkeeping for queues, tasks and attempts."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.cloud import tasks_v2

from .names import short_id
from .queues import QueueSettings
from .ratelimit import TokenBucket
from .tasks import Target


class Phase(enum.Enum):
    SCHEDULED = enum.auto()  # waiting in the schedule heap for its ETA
    READY = enum.auto()  # due, waiting for its queue to be running and to have capacity
    IN_FLIGHT = enum.auto()
    DONE = enum.auto()  # completed, given up, deleted or purged


@dataclass(eq=False, slots=True)
class QueueEntry:
    # Snapshots handed to gRPC responses, which serialize them outside the lock: they are
    # replaced on change, never mutated.
    queue: tasks_v2.Queue
    settings: QueueSettings
    bucket: TokenBucket
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    ready: deque[TaskEntry] = field(default_factory=deque)
    in_flight: int = 0

    @property
    def short_id(self) -> str:
        return short_id(self.queue.name)

    @property
    def running(self) -> bool:
        return bool(self.queue.state == tasks_v2.Queue.State.RUNNING)


@dataclass(eq=False, slots=True)
class TaskEntry:
    task_id: str
    queue: QueueEntry
    task: tasks_v2.Task  # snapshot, like QueueEntry.queue
    target: Target
    # The retry settings the task sets for itself, over its queue's (Task.retry_config).
    retry: dict[str, Any] | None = None
    phase: Phase = Phase.SCHEDULED
    # Which heap entry is current: a rescheduled or deleted task leaves stale ones behind.
    heap_seq: int = 0
    execution_count: int = 0  # earlier attempts answered with anything but a 5xx
    previous_response: int | None = None
    first_dispatch: float = 0.0  # set by the first attempt


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt handed to a dispatch worker."""

    entry: TaskEntry
    # The store's reset count when the attempt started; a reset orphans older attempts.
    epoch: int
    attempt: int
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    """One HTTP attempt, as the target saw it."""

    queue: str
    task: str
    url: str
    status: int  # -1 when no response arrived (connection error or timeout)
    attempt: int  # the X-CloudTasks-TaskRetryCount sent
    headers: Mapping[str, str]
    started_at: float  # epoch seconds
    duration: float  # seconds


@dataclass(frozen=True, slots=True)
class QueueView:
    """A queue as the web page shows it, copied out under the store's lock."""

    queue: tasks_v2.Queue
    in_flight: int
    # The first tasks in schedule order, each with whether an attempt is under way.
    tasks: list[tuple[tasks_v2.Task, bool]]
    task_count: int
