"""Exceptions raised to users of the backend."""

from __future__ import annotations

from django.tasks.exceptions import TaskException


class CloudTasksError(TaskException):
    """Cloud Tasks refused or could not take a task; the message says which queue and what to do.

    The original ``google.api_core`` exception is kept as ``__cause__``.
    """

    def __init__(self, message: str, *, queue: str) -> None:
        super().__init__(message)
        self.queue = queue


class PayloadTooLarge(TaskException, ValueError):
    """A task's arguments make it larger than Cloud Tasks accepts."""
