"""The demo's tasks: one of each kind the backend supports.

Cloud Tasks carries arguments and return values as JSON, so every task takes and returns plain
JSON types.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from django.tasks import TaskContext, task
from django.utils import timezone

logger = logging.getLogger(__name__)


@task
def add_numbers(a: float, b: float) -> float:
    return a + b


@task
def send_notification(message: str) -> str:
    # A real project would send an email or a push message here.
    logger.info("Notification: %s", message)
    return f"Notified: {message}"


@task
def process_data(numbers: list[float]) -> dict[str, float]:
    return {
        "count": len(numbers),
        "sum": sum(numbers),
        "mean": statistics.fmean(numbers),
        "min": min(numbers),
        "max": max(numbers),
    }


# Routed to the Cloud Tasks queue of the same name; the priority travels with the task.
@task(queue_name="high-priority", priority=50)
def urgent_alert(message: str) -> str:
    logger.warning("Urgent: %s", message)
    return f"Alerted: {message}"


@task(takes_context=True)
def report_context(context: TaskContext[..., Any], message: str) -> dict[str, Any]:
    return {
        "task_id": context.task_result.id,
        "attempt": context.attempt,
        "message": message,
    }


# On its own queue, which gives a task 4 attempts a few seconds apart (demo/queues.py): answering
# 500 makes Cloud Tasks retry with that backoff, then give up.
@task(queue_name="retries")
def always_fails() -> None:
    raise RuntimeError("This task fails on purpose")


@task
def delayed_greeting(name: str) -> str:
    return f"Hello, {name}!"


# Declared in settings.SCHEDULES: Cloud Scheduler (the emulator locally) enqueues it every minute.
@task
def heartbeat() -> str:
    now = timezone.now().isoformat(timespec="seconds")
    logger.info("Heartbeat: the periodic task ran at %s", now)
    return f"Heartbeat at {now}"
