"""Exceptions of this package: those raised to users (the one module of classes to catch), and
the execute view's one refusal type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.tasks import TaskResult
from django.tasks.exceptions import TaskException

__all__ = [
    "BulkEnqueueError",
    "CloudTasksError",
    "EnqueueOutcomeUnknown",
    "PayloadTooLarge",
    "PermanentFailure",
]


class CloudTasksError(TaskException):
    """Cloud Tasks did not add the task; the message says which queue and what to do.

    The original ``google.api_core`` exception is kept as ``__cause__``.
    """

    def __init__(self, message: str, *, queue: str) -> None:
        super().__init__(message)
        self.queue = queue


class EnqueueOutcomeUnknown(CloudTasksError):
    """Cloud Tasks may have added the task: no answer came within ``ENQUEUE_DEADLINE``.

    ``result_id`` is the id the task would run under (and, with ``NAMED_TASKS``, its Cloud Tasks
    task id): a delivery carries it, and with ``STORE_RESULTS`` its row says whether it ran.
    """

    def __init__(self, message: str, *, queue: str, result_id: str) -> None:
        super().__init__(message, queue=queue)
        self.result_id = result_id


class BulkEnqueueError(CloudTasksError):
    """Some calls of a bulk enqueue were not added, or may not have been.

    ``results`` has one ``TaskResult`` per call, in order; ``enqueued`` holds those Cloud Tasks
    created (``task_enqueued`` was sent for each), ``not_added`` maps the index of each call it
    refused to the reason, and ``unknown`` lists the indexes whose outcome is unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        queue: str,
        results: Sequence[TaskResult[..., Any]],
        enqueued: Sequence[TaskResult[..., Any]],
        not_added: Mapping[int, str],
        unknown: Sequence[int],
    ) -> None:
        super().__init__(message, queue=queue)
        self.results = list(results)
        self.enqueued = list(enqueued)
        self.not_added = dict(not_added)
        self.unknown = list(unknown)


class PayloadTooLarge(TaskException, ValueError):
    """A task's arguments make it larger than Cloud Tasks accepts."""


class PermanentFailure(Exception):
    """Raise it from a task to fail it for good: recorded FAILED, and Cloud Tasks does not retry it.

    For a failure that no retry can fix (a card declined, a record gone). Subclass it for your own
    permanent errors; its class, not its message, is what the execute view answers.
    """


class Refused(Exception):
    """The execute view will not run this request: ``status`` is the 4xx/5xx answer, ``reason`` why.

    Raised wherever a check fails (authentication, the body, the task lookup, the arguments) and
    answered in one place, the view. Internal: users never see it, only its response.
    """

    def __init__(
        self, status: int, reason: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
