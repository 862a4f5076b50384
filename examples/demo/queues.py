"""What the queue knows about the demo's tasks: how many attempts a task gets, and when the next is.

The result store records what happened; only the queue knows what will. Between two attempts a
failing task is FAILED in the store while its queue still holds it for a retry, and a delayed task
is READY until its scheduled time. So the page asks the queue (the emulator, through the real Cloud
Tasks API) about every task not yet finished for good: a task the queue still holds is retrying or
scheduled; one it no longer holds has run its last attempt, or was lost when an emulator that keeps
nothing was restarted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import grpc
from google.api_core.exceptions import AlreadyExists, GoogleAPICallError, NotFound
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from django_tasks_cloud_tasks.config import CloudTasksConfig

# The failing task's queue's: a few attempts, a few seconds apart, so that a visitor sees it
# retried and then given up on (a queue's default is 100 attempts, up to an hour apart).
RETRIES_POLICY = tasks_v2.RetryConfig(
    max_attempts=4, min_backoff=timedelta(seconds=1), max_backoff=timedelta(seconds=2)
)
_TIMEOUT = 2.0


@dataclass(frozen=True)
class InQueue:
    """Whether the queue still holds a task (None: it cannot say), and when its next attempt is."""

    held: bool | None
    next_attempt_at: datetime | None = None


UNKNOWN = InQueue(held=None)


@cache
def _client(emulator_host: str) -> tasks_v2.CloudTasksClient:
    channel = grpc.insecure_channel(emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def ensure_queue(config: CloudTasksConfig, queue_id: str, retry: tasks_v2.RetryConfig) -> None:
    """Create queue ``queue_id`` on the emulator with this retry policy, unless it exists."""
    if config.emulator_host is None:
        return  # On Google Cloud, queues are created with gcloud.
    queue = tasks_v2.Queue(name=config.queue_path(queue_id), retry_config=retry)
    with contextlib.suppress(AlreadyExists):
        _client(config.emulator_host).create_queue(
            parent=config.location_path, queue=queue, timeout=_TIMEOUT
        )


class QueueLookup:
    """Answers about queues and tasks for one page refresh, asking each queue once."""

    def __init__(self, config: CloudTasksConfig) -> None:
        self._config = config
        self._max_attempts: dict[str, int | None] = {}

    def max_attempts(self, queue_id: str) -> int | None:
        """Attempts a task gets in ``queue_id`` (None: unlimited, or the queue cannot say)."""
        if queue_id not in self._max_attempts:
            self._max_attempts[queue_id] = self._read_max_attempts(queue_id)
        return self._max_attempts[queue_id]

    def in_queue(self, cloud_task_name: str) -> InQueue:
        if self._config.emulator_host is None or not cloud_task_name:
            return UNKNOWN
        try:
            task = _client(self._config.emulator_host).get_task(
                name=cloud_task_name, timeout=_TIMEOUT
            )
        except NotFound:
            return InQueue(held=False)
        except GoogleAPICallError:
            return UNKNOWN  # The emulator is down: say nothing rather than something wrong.
        return InQueue(held=True, next_attempt_at=task.schedule_time)

    def _read_max_attempts(self, queue_id: str) -> int | None:
        if self._config.emulator_host is None:
            return None
        try:
            queue = _client(self._config.emulator_host).get_queue(
                name=self._config.queue_path(queue_id), timeout=_TIMEOUT
            )
        except GoogleAPICallError:
            return None
        attempts = queue.retry_config.max_attempts
        return attempts if attempts > 0 else None  # -1: unlimited
