"""Running a delivered task exactly as Django's ``ImmediateBackend`` runs one.

Statuses go RUNNING → SUCCESSFUL or FAILED, ``task_started`` and ``task_finished`` are sent with
the backend class as sender, an exception becomes a ``TaskError`` with its traceback, and the return
value is normalised to JSON. The one difference is the attempt number, which comes from Cloud Tasks.

What differs is what a failure means, because the view's answer decides whether Cloud Tasks runs
the task again (``Outcome.retry``). The rule, written out in docs/failures.md: a task that raised
is retried, unless it raised ``PermanentFailure`` or it was its ``max_attempts``-th attempt; a
task that ran but returned what cannot be stored as JSON fails for good, since a retry would repeat
its side effects and fail the same way; an interrupted async task (cancelled) records the
interruption and lets the cancellation go on.

While a task runs (sync or async), its ``log_fields`` are the current task's
(``tracing.consuming``), so that every record it logs carries them (``cloud_logging``); with
OpenTelemetry, the attempt is a CONSUMER span.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from inspect import iscoroutinefunction
from traceback import format_exception
from typing import Any

from asgiref.sync import sync_to_async
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from . import tracing
from .attempts import max_attempts_of
from .exceptions import PermanentFailure
from .payload import Payload

logger = logging.getLogger(__name__)
_PLAIN_JSON = frozenset({str, int, bool})

# Stands in the worker ids for earlier attempts, whose workers this process cannot know.
UNKNOWN_WORKER = "unknown"


@cache
def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def worker_id() -> str:
    """Identifies this serving instance and process (Cloud Run instances have unique host names)."""
    return _worker_id(os.getpid())


@dataclass(frozen=True, slots=True)
class Attempt:
    """What Cloud Tasks says about this delivery."""

    number: int  # 1 for the first delivery; X-CloudTasks-TaskRetryCount + 1.
    task_name: str | None = None  # The Cloud Tasks task id.

    def worker_ids(self, recorded: Sequence[str] = ()) -> tuple[str, ...]:
        """One worker id per attempt, this one last; Cloud Tasks' count says how many there are.

        The earlier places hold the workers ``recorded`` (by the result store), and
        ``UNKNOWN_WORKER`` for attempts nobody saw: deliveries refused as duplicates (Cloud Tasks
        counts those as retries too), a row pruned or a store switched on in between, or every
        earlier attempt without a store. If more were recorded than Cloud Tasks counts (a request
        replayed by hand), the surplus goes, so that ``context.attempt`` stays
        X-CloudTasks-TaskRetryCount + 1, the number that Cloud Tasks' retry limits are about.
        """
        earlier = list(recorded[: self.number - 1])
        earlier += [UNKNOWN_WORKER] * (self.number - 1 - len(earlier))
        return (*earlier, worker_id())


@dataclass(frozen=True, slots=True)
class Claim:
    """The task's history as this attempt starts it: what the result store records on a claim.

    Without a store every attempt starts a history of its own (``Claim.first``).
    """

    started_at: datetime  # Of the first attempt.
    attempted_at: datetime  # Of this attempt.
    worker_ids: tuple[str, ...]  # One per attempt, this one last.
    errors: tuple[TaskError, ...]  # Of the earlier attempts.

    @classmethod
    def first(cls, attempt: Attempt, now: datetime) -> Claim:
        """The claim of a task with no recorded history: it starts now."""
        return cls(started_at=now, attempted_at=now, worker_ids=attempt.worker_ids(), errors=())


def start(
    sender: type,
    task: Task[..., Any],
    payload: Payload,
    attempt: Attempt,
    claim: Claim | None = None,
) -> TaskResult[..., Any]:
    """Build the RUNNING result of this attempt and announce it.

    With a result store, ``claim`` carries the task's history: its first start, the workers and
    the errors of earlier attempts.
    """
    if claim is None:
        claim = Claim.first(attempt, timezone.now())
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=payload.task_id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=payload.enqueued_at,
        started_at=claim.started_at,
        last_attempted_at=claim.attempted_at,
        finished_at=None,
        args=payload.args,
        kwargs=payload.kwargs,
        backend=payload.backend,
        errors=list(claim.errors),
        worker_ids=list(claim.worker_ids),
    )
    task_started.send(sender=sender, task_result=result)
    return result


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: its result, and whether Cloud Tasks should run the task again."""

    result: TaskResult[..., Any]
    # Only a task that raised is retried, and not when it raised PermanentFailure or had used its
    # max_attempts; never a task that ran but whose return value cannot be stored.
    retry: bool = False
    exception: BaseException | None = None  # Why it failed, if it did.


def run(sender: type, result: TaskResult[..., Any]) -> Outcome:
    """Call the task function in this thread; async functions get an event loop of their own."""
    with tracing.consuming(result, _fields(result)) as finished:
        outcome = _call(sender, result)
        finished(outcome)
    return outcome


def _call(sender: type, result: TaskResult[..., Any]) -> Outcome:
    try:
        value = result.task.call(*_arguments(result), **result.kwargs)
    except Exception as exc:
        return _failed(sender, result, exc)
    return _returned(sender, result, value)


async def arun(sender: type, result: TaskResult[..., Any]) -> Outcome:
    """Await an async task function on this event loop; a sync one runs in a thread.

    A sync function cannot be interrupted, so it runs to its end and records its outcome even if
    this coroutine is cancelled (a client gone at its dispatch deadline). An async one is
    cancelled at its next ``await``: its result records the interruption, and the cancellation
    goes on to the caller.
    """
    if not iscoroutinefunction(result.task.func):
        return await asyncio.shield(sync_to_async(run)(sender, result))
    with tracing.consuming(result, _fields(result)) as finished:
        outcome = await _acall(sender, result)
        finished(outcome)
    return outcome


async def _acall(sender: type, result: TaskResult[..., Any]) -> Outcome:
    try:
        value = await result.task.func(*_arguments(result), **result.kwargs)
    except asyncio.CancelledError as exc:
        _failed(sender, result, exc)
        raise
    except Exception as exc:
        return _failed(sender, result, exc)
    return _returned(sender, result, value)


def _arguments(result: TaskResult[..., Any]) -> list[Any]:
    if result.task.takes_context:
        return [TaskContext(task_result=result), *result.args]
    return result.args


def _returned(sender: type, result: TaskResult[..., Any], value: Any) -> Outcome:
    try:
        value = normalize_json(value)
        _check_storable(value)
    except (TypeError, ValueError) as exc:
        exc.add_note("The task ran, but its return value is not JSON: it is not retried.")
        return _failed(sender, result, exc, retry=False)
    object.__setattr__(result, "_return_value", value)
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    task_finished.send(sender=sender, task_result=result)
    return Outcome(result)


def _check_storable(value: Any) -> None:
    """Refuse what JSON cannot hold but Python's json writes: NaN and the infinities."""
    if value is None or type(value) in _PLAIN_JSON:
        return  # The usual return values, checked without encoding them.
    json.dumps(value, allow_nan=False)


def _failed(
    sender: type, result: TaskResult[..., Any], exc: BaseException, retry: bool | None = None
) -> Outcome:
    exception_type = type(exc)
    object.__setattr__(result, "finished_at", timezone.now())
    result.errors.append(
        TaskError(
            exception_class_path=f"{exception_type.__module__}.{exception_type.__qualname__}",
            traceback="".join(format_exception(exc)),
        )
    )
    object.__setattr__(result, "status", TaskResultStatus.FAILED)
    if retry is None:
        retry = _retries(result, exc)
    _log_failure(result, exc, retry)
    # Sent inside the except block, so receivers (Django's logger) see exc_info, as in Django.
    task_finished.send(sender=sender, task_result=result)
    return Outcome(result, retry, exc)


def _retries(result: TaskResult[..., Any], exc: BaseException) -> bool:
    if isinstance(exc, PermanentFailure | asyncio.CancelledError):
        return False  # Cloud Tasks retries an interrupted attempt on its own: it got no answer.
    max_attempts = max_attempts_of(result.task)
    return max_attempts is None or result.attempts < max_attempts


def _log_failure(result: TaskResult[..., Any], exc: BaseException, retry: bool) -> None:
    if isinstance(exc, asyncio.CancelledError):
        level, what = logging.WARNING, "was interrupted (the request was cancelled)"
    elif retry:
        level, what = logging.WARNING, "failed; Cloud Tasks will retry it"
    else:
        level, what = logging.ERROR, "failed for good; it will not be retried"
    logger.log(
        level,
        "Task %s (%s), attempt %d, %s.",
        result.task.module_path,
        result.id,
        result.attempts,
        what,
        exc_info=exc,
        extra=_fields(result),
    )


def _fields(result: TaskResult[..., Any]) -> dict[str, Any]:
    return log_fields(
        task_id=result.id,
        task_path=result.task.module_path,
        attempt=result.attempts,
        queue_name=result.task.queue_name,
        backend=result.backend,
    )


def log_fields(
    *, task_id: str, task_path: str, attempt: int | None, queue_name: str, backend: str
) -> dict[str, Any]:
    """The structured fields (``extra=``) of a log line about an attempt, so that Cloud Logging
    can filter on them: one set of names wherever an attempt is logged."""
    return {
        "task_id": task_id,
        "task_path": task_path,
        "attempt": attempt,
        "queue_name": queue_name,
        "backend": backend,
    }
