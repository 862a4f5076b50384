"""Google Cloud Tasks backend for Django's task framework (``django.tasks``)."""

from .backend import Call, CloudTasksBackend, aenqueue_many, enqueue_many
from .exceptions import BulkEnqueueError, CloudTasksError, EnqueueOutcomeUnknown, PayloadTooLarge

__all__ = [
    "BulkEnqueueError",
    "Call",
    "CloudTasksBackend",
    "CloudTasksError",
    "EnqueueOutcomeUnknown",
    "PayloadTooLarge",
    "aenqueue_many",
    "enqueue_many",
]
__version__ = "0.2.0"
