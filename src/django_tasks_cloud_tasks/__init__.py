"""Google Cloud Tasks backend for Django's task framework (``django.tasks``)."""

from .backend import CloudTasksBackend
from .exceptions import CloudTasksError, PayloadTooLarge

__all__ = ["CloudTasksBackend", "CloudTasksError", "PayloadTooLarge"]
__version__ = "0.2.0"
