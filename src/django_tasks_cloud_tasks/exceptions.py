"""Exceptions of this package: those raised to users, and the execute view's one refusal type."""

from __future__ import annotations

from collections.abc import Mapping

from django.tasks.exceptions import TaskException

__all__ = ["CloudTasksError", "PayloadTooLarge", "PermanentFailure"]


class CloudTasksError(TaskException):
    """Cloud Tasks refused or could not take a task; the message says which queue and what to do.

    The original ``google.api_core`` exception is kept as ``__cause__``.
    """

    def __init__(self, message: str, *, queue: str) -> None:
        super().__init__(message)
        self.queue = queue


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
