"""Log records that Cloud Logging puts in the task's trace, with the task's fields on each.

Decision: the standard library's ``logging`` only, so that it adds nothing to install and works
with any handler. ``CloudTraceFilter`` adds to every record emitted while a task runs its
``task_id``, ``task_path``, ``queue_name``, ``attempt`` and ``backend`` (``execution.log_fields``,
the names the execute view's own lines use), and to every record emitted with a trace context
(``tracing.current``) the keys Cloud Run's logging agent turns into the LogEntry's trace fields:
``logging.googleapis.com/trace`` (``projects/PROJECT/traces/TRACE_ID``),
``logging.googleapis.com/spanId`` (16 hex digits) and ``logging.googleapis.com/trace_sampled``.
``CloudLoggingFormatter`` writes a record as the one-line JSON that Cloud Run reads from stdout
and adds the same fields itself, so a handler needs nothing else (see docs/observability.md).

The project of the trace field is the task's backend's ``CLOUD_TASKS_PROJECT``, else the
``project`` the filter was given, else ``GOOGLE_CLOUD_PROJECT``, else the default backend's.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from . import tracing

__all__ = ["CloudLoggingFormatter", "CloudTraceFilter"]

TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"
TASK_FIELDS = ("task_id", "task_path", "queue_name", "attempt", "backend")
_TRACE_FIELDS = (TRACE, SPAN_ID, TRACE_SAMPLED)
# Cloud Logging's severities; Python's level names are among them except these.
_SEVERITIES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
# Attributes every LogRecord has: what is not among them was passed in ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def add_fields(record: logging.LogRecord, project: str | None = None) -> None:
    """Add the running task's fields and the trace fields to ``record``, keeping any it has."""
    fields = tracing.task_fields()
    if fields is not None:
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
    if hasattr(record, SPAN_ID):
        return
    context = tracing.current()
    if context is None:
        return
    project = _project_of(getattr(record, "backend", None)) or project
    if project:
        setattr(record, TRACE, f"projects/{project}/traces/{context.trace_id}")
    setattr(record, SPAN_ID, context.span_id)
    setattr(record, TRACE_SAMPLED, context.sampled)


def _project_of(alias: Any) -> str | None:
    from django.tasks import task_backends

    from .backend import CloudTasksBackend

    try:
        backend = task_backends[alias if isinstance(alias, str) else "default"]
    except Exception:  # No such backend, or TASKS is broken: a log call must not fail for it.
        return None
    if not isinstance(backend, CloudTasksBackend) or backend._config is None:
        return None
    return backend._config.project


class CloudTraceFilter(logging.Filter):
    """Adds the task's fields and the Cloud Logging trace fields to each record (never drops one).

    ``project``: the Google Cloud project of the trace field when the record is about no Cloud
    Tasks backend's task; default ``GOOGLE_CLOUD_PROJECT``.
    """

    def __init__(self, name: str = "", project: str | None = None) -> None:
        super().__init__(name)
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")

    def filter(self, record: logging.LogRecord) -> bool:
        add_fields(record, self.project)
        return True


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line, as Cloud Run's logging agent reads structured logs from stdout.

    ``severity``, ``message`` (with the traceback, which Error Reporting reads), ``time``,
    ``logger``, the trace fields, the task's fields, and whatever else the record was given in
    ``extra`` that JSON can hold (the rest as its ``str``).
    """

    def __init__(self, *args: Any, project: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")

    def format(self, record: logging.LogRecord) -> str:
        add_fields(record, self.project)
        message = record.getMessage()
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, Any] = {
            "severity": _SEVERITIES.get(record.levelname, record.levelname),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        return json.dumps(entry, default=str)
