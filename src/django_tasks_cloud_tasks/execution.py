"""Running a delivered task exactly as Django's ``ImmediateBackend`` runs one.

Statuses go RUNNING → SUCCESSFUL or FAILED, ``task_started`` and ``task_finished`` are sent with
the backend class as sender, an exception becomes a ``TaskError`` with its traceback, and the return
value is normalised to JSON. The one difference is the attempt number, which comes from Cloud Tasks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from traceback import format_exception
from typing import Any

from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from .payload import Payload

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


def run(sender: type, result: TaskResult[..., Any]) -> TaskResult[..., Any]:
    """Call the task function in this thread; async functions get an event loop of their own."""
    with _recording(sender, result):
        _succeeded(result, result.task.call(*_arguments(result), **result.kwargs))
    return result


async def arun(sender: type, result: TaskResult[..., Any]) -> TaskResult[..., Any]:
    """Await an async task function natively; a sync one runs in a thread (``Task.acall``)."""
    with _recording(sender, result):
        _succeeded(result, await result.task.acall(*_arguments(result), **result.kwargs))
    return result


def _arguments(result: TaskResult[..., Any]) -> list[Any]:
    if result.task.takes_context:
        return [TaskContext(task_result=result), *result.args]
    return result.args


@contextmanager
def _recording(sender: type, result: TaskResult[..., Any]) -> Iterator[None]:
    """Record how the task call in the block ended, and announce it; only Ctrl-C escapes."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _failed(sender, result, exc)
    else:
        task_finished.send(sender=sender, task_result=result)


def _succeeded(result: TaskResult[..., Any], value: Any) -> None:
    # Normalising may raise (a non-JSON return value), which fails the task like ImmediateBackend.
    object.__setattr__(result, "_return_value", normalize_json(value))
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)


def _failed(sender: type, result: TaskResult[..., Any], exc: BaseException) -> None:
    exception_type = type(exc)
    object.__setattr__(result, "finished_at", timezone.now())
    result.errors.append(
        TaskError(
            exception_class_path=f"{exception_type.__module__}.{exception_type.__qualname__}",
            traceback="".join(format_exception(exc)),
        )
    )
    object.__setattr__(result, "status", TaskResultStatus.FAILED)
    # Sent inside the except block, so receivers (Django's logger) see exc_info, as in Django.
    task_finished.send(sender=sender, task_result=result)
