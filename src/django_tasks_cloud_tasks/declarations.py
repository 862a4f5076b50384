"""Queues and schedules declared in a backend's OPTIONS, parsed once and checked field by field.

``CLOUD_TASKS_QUEUES`` gives each Cloud Tasks queue its rate limits and retry policy;
``SCHEDULES`` gives each periodic task its cron expression, time zone and arguments. Both are
parsed with the rest of the configuration (``config.resolve``), so a bad entry raises
``ImproperlyConfigured`` naming the alias, the entry and the field when the backend is first built.

Only what is declared is managed: a field left out keeps whatever value the queue has (the default
for a new queue), so adopting an existing queue never resets settings nobody wrote down. Whether a
schedule's task path really names a ``Task`` is checked by a system check, not here: importing
task modules while the backend is being built would build the backend again (``@task`` asks it to
validate each task).
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeGuard

from cronsim import CronSim, CronSimError
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
from django.utils import timezone

from .limits import JOB_ID, MAX_CONCURRENT_DISPATCHES, MAX_DISPATCHES_PER_SECOND, QUEUE_ID


@dataclass(frozen=True, slots=True)
class QueueDeclaration:
    """A queue and the fields its declaration sets; ``None`` means "not managed"."""

    queue_id: str
    max_dispatches_per_second: float | None = None
    max_concurrent_dispatches: int | None = None
    max_attempts: int | None = None
    min_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    max_doublings: int | None = None
    max_retry_duration: timedelta | None = None

    def declared(self) -> dict[str, Any]:
        """``{field: value}`` of the managed fields, named as in the Cloud Tasks API."""
        return {
            name: getattr(self, name) for name in QUEUE_FIELDS if getattr(self, name) is not None
        }


# Field name -> (Cloud Tasks API path, kind).
QUEUE_FIELDS: dict[str, tuple[str, str]] = {
    "max_dispatches_per_second": ("rate_limits.max_dispatches_per_second", "rate"),
    "max_concurrent_dispatches": ("rate_limits.max_concurrent_dispatches", "count"),
    "max_attempts": ("retry_config.max_attempts", "attempts"),
    "min_backoff": ("retry_config.min_backoff", "duration"),
    "max_backoff": ("retry_config.max_backoff", "duration"),
    "max_doublings": ("retry_config.max_doublings", "doublings"),
    "max_retry_duration": ("retry_config.max_retry_duration", "duration"),
}


@dataclass(frozen=True, slots=True)
class ScheduleDeclaration:
    """A periodic task: enqueue ``task`` with these arguments at each ``cron`` time."""

    name: str
    task: str
    cron: str
    time_zone: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    queue_name: str | None
    priority: int | None
    description: str

    def next_runs(self, after: Any = None, count: int = 1) -> list[Any]:
        """The next ``count`` run times after ``after`` (default now), in the schedule's zone."""
        start = (after or timezone.now()).astimezone(zoneinfo.ZoneInfo(self.time_zone))
        runs = CronSim(self.cron, start)
        return [next(runs) for _ in range(count)]


SCHEDULE_KEYS = frozenset(
    {"task", "cron", "time_zone", "args", "kwargs", "queue_name", "priority", "description"}
)


class DeclarationError(ValueError):
    """A declaration is malformed; the message names the entry and the field."""


def parse_queues(value: object) -> tuple[QueueDeclaration, ...]:
    """The ``CLOUD_TASKS_QUEUES`` option: ``{queue id: {field: value}}``."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DeclarationError(
            "CLOUD_TASKS_QUEUES must map a queue id to its settings, e.g. "
            "{'default': {'max_attempts': 5, 'max_dispatches_per_second': 10}}."
        )
    return tuple(_queue(queue_id, fields) for queue_id, fields in value.items())


def _queue(queue_id: object, fields: object) -> QueueDeclaration:
    if not (isinstance(queue_id, str) and QUEUE_ID.fullmatch(queue_id)):
        raise DeclarationError(
            f"CLOUD_TASKS_QUEUES key {queue_id!r} is not a valid queue id (1-100 letters, digits "
            "and hyphens)."
        )
    where = f"CLOUD_TASKS_QUEUES[{queue_id!r}]"
    if not isinstance(fields, Mapping):
        raise DeclarationError(f"{where} must be a dict of queue settings.")
    if "max_burst_size" in fields:
        raise DeclarationError(
            f"{where}['max_burst_size'] cannot be set: Cloud Tasks chooses the burst size from "
            "max_dispatches_per_second. Remove it."
        )
    unknown = sorted(set(map(str, fields)) - QUEUE_FIELDS.keys())
    if unknown:
        raise DeclarationError(
            f"{where} has unknown fields {', '.join(map(repr, unknown))}. Valid fields are "
            f"{', '.join(QUEUE_FIELDS)}."
        )
    parsed = {
        name: _QUEUE_PARSERS[kind](where, name, fields[name])
        for name, (_, kind) in QUEUE_FIELDS.items()
        if fields.get(name) is not None
    }
    declaration = QueueDeclaration(queue_id, **parsed)
    low, high = declaration.min_backoff, declaration.max_backoff
    if low is not None and high is not None and low > high:
        raise DeclarationError(f"{where}: min_backoff must not exceed max_backoff.")
    return declaration


def _rate(where: str, name: str, value: object) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and 0 < value <= MAX_DISPATCHES_PER_SECOND:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    raise DeclarationError(
        f"{where}[{name!r}] must be a number in (0, {MAX_DISPATCHES_PER_SECOND:g}], not {value!r}."
    )


def _count(where: str, name: str, value: object) -> int:
    if _is_int(value) and 1 <= value <= MAX_CONCURRENT_DISPATCHES:
        return value
    raise DeclarationError(
        f"{where}[{name!r}] must be an integer from 1 to {MAX_CONCURRENT_DISPATCHES}, "
        f"not {value!r}."
    )


def _attempts(where: str, name: str, value: object) -> int:
    if _is_int(value) and (value == -1 or value >= 1):
        return value
    raise DeclarationError(
        f"{where}[{name!r}] must be a positive integer, or -1 for unlimited, not {value!r}."
    )


def _doublings(where: str, name: str, value: object) -> int:
    if _is_int(value) and value >= 0:
        return value
    raise DeclarationError(f"{where}[{name!r}] must be an integer of 0 or more, not {value!r}.")


def _duration(where: str, name: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        duration = timedelta(seconds=value)
    else:
        duration = timedelta(-1)
    if duration < timedelta(0):
        raise DeclarationError(
            f"{where}[{name!r}] must be a number of seconds (or a timedelta) of 0 or more, "
            f"not {value!r}."
        )
    return duration


_QUEUE_PARSERS: dict[str, Callable[[str, str, object], Any]] = {
    "rate": _rate,
    "count": _count,
    "attempts": _attempts,
    "doublings": _doublings,
    "duration": _duration,
}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_schedules(value: object) -> tuple[ScheduleDeclaration, ...]:
    """The ``SCHEDULES`` option: ``{schedule name: {"task": ..., "cron": ..., ...}}``."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DeclarationError(
            "SCHEDULES must map a schedule name to its task and cron expression, e.g. "
            "{'nightly-report': {'task': 'reports.tasks.nightly', 'cron': '0 3 * * *'}}."
        )
    return tuple(_schedule(name, fields) for name, fields in value.items())


def _schedule(name: object, fields: object) -> ScheduleDeclaration:
    if not (isinstance(name, str) and JOB_ID.fullmatch(name)):
        raise DeclarationError(
            f"SCHEDULES key {name!r} is not a valid schedule name (1-500 letters, digits, "
            "hyphens and underscores: it becomes the Cloud Scheduler job id)."
        )
    where = f"SCHEDULES[{name!r}]"
    if not isinstance(fields, Mapping):
        raise DeclarationError(f"{where} must be a dict with at least 'task' and 'cron'.")
    unknown = sorted(set(map(str, fields)) - SCHEDULE_KEYS)
    if unknown:
        raise DeclarationError(
            f"{where} has unknown fields {', '.join(map(repr, unknown))}. Valid fields are "
            f"{', '.join(sorted(SCHEDULE_KEYS))}."
        )
    task = fields.get("task")
    if not (isinstance(task, str) and "." in task):
        raise DeclarationError(
            f"{where}['task'] must be the import path of a task, e.g. 'reports.tasks.nightly'."
        )
    cron = fields.get("cron")
    if not isinstance(cron, str):
        raise DeclarationError(f"{where}['cron'] must be a cron expression, e.g. '0 3 * * *'.")
    try:
        CronSim(cron, timezone.now())
    except CronSimError as exc:
        raise DeclarationError(
            f"{where}['cron'] {cron!r} is not a valid cron expression ({exc}). Use five fields: "
            "minute hour day-of-month month day-of-week."
        ) from None
    time_zone = fields.get("time_zone", "UTC")
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise DeclarationError(
            f"{where}['time_zone'] {time_zone!r} is not a time zone name, e.g. 'Europe/Paris' "
            "or 'UTC'."
        ) from None
    args = fields.get("args", [])
    kwargs = fields.get("kwargs", {})
    if not isinstance(args, list | tuple):
        raise DeclarationError(f"{where}['args'] must be a list.")
    if not (isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)):
        raise DeclarationError(f"{where}['kwargs'] must be a dict with string keys.")
    for field, arguments in (("args", list(args)), ("kwargs", dict(kwargs))):
        try:
            json.dumps(arguments, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DeclarationError(
                f"{where}[{field!r}] must be JSON: tasks receive their arguments as JSON ({exc})."
            ) from None
    queue_name = fields.get("queue_name")
    if queue_name is not None and not (
        isinstance(queue_name, str) and QUEUE_ID.fullmatch(queue_name)
    ):
        raise DeclarationError(f"{where}['queue_name'] {queue_name!r} is not a valid queue id.")
    priority = fields.get("priority")
    if priority is not None and not (
        _is_int(priority) and TASK_MIN_PRIORITY <= priority <= TASK_MAX_PRIORITY
    ):
        raise DeclarationError(
            f"{where}['priority'] must be an integer from {TASK_MIN_PRIORITY} to "
            f"{TASK_MAX_PRIORITY}, not {priority!r}."
        )
    description = fields.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise DeclarationError(f"{where}['description'] must be a string of at most 500 chars.")
    return ScheduleDeclaration(
        name=name,
        task=task,
        cron=cron,
        time_zone=str(time_zone),
        args=tuple(args),
        kwargs=dict(kwargs),
        queue_name=queue_name,
        priority=priority,
        description=description,
    )
