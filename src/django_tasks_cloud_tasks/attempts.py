"""Tasks that may cap their attempts: ``@task(max_attempts=3)``.

Cloud Tasks retries a failed task up to its queue's ``max_attempts``; a task may want fewer (a
payment, an e-mail). The name and the place follow Django's direction: a proposal for Django's
tasks puts ``max_attempts`` on ``@task(...)``, and Django 6.1 passes extra ``@task(**kwargs)`` to
the backend's ``task_class``, which is ``CloudTask`` for this backend. Django 6.0 does not pass
them on: there, ``django_tasks_cloud_tasks.task`` is the same decorator, and takes ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task
from django.tasks.base import DEFAULT_TASK_PRIORITY
from django.tasks.exceptions import InvalidTask

__all__ = ["CloudTask", "task"]

if TYPE_CHECKING:
    _Task = Task
else:
    # Django's Task is generic to type checkers only.
    class _Task[**P, R](Task):
        __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudTask[**P, R](_Task[P, R]):
    """A ``django.tasks.Task`` that may cap its attempts below its queue's ``max_attempts``.

    A failure on attempt ``max_attempts`` (``context.attempt``) or later is final: recorded
    FAILED and answered 2xx, so Cloud Tasks runs the task no more. ``None`` leaves it to the queue.
    """

    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise InvalidTask(
                f"max_attempts of {self.func.__qualname__} must be a whole number of at least 1, "
                f"not {self.max_attempts!r}."
            )
        Task.__post_init__(self)  # Not super(): slots=True makes a new class.


@overload
def task[**P, R](function: Callable[P, R], /) -> CloudTask[P, R]: ...
@overload
def task[**P, R](
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: bool = ...,
    max_attempts: int | None = ...,
) -> Callable[[Callable[P, R]], CloudTask[P, R]]: ...
def task[**P, R](
    function: Callable[P, R] | None = None,
    *,
    priority: int = DEFAULT_TASK_PRIORITY,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
) -> CloudTask[P, R] | Callable[[Callable[P, R]], CloudTask[P, R]]:
    """Django's ``@task``, with ``max_attempts``, on every Django version this package supports."""

    def wrapper(func: Callable[P, R]) -> CloudTask[P, R]:
        return CloudTask(
            func=func,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            run_after=None,  # Django 6.0's Task gives it no default.
            takes_context=takes_context,
            max_attempts=max_attempts,
        )

    return wrapper(function) if function is not None else wrapper


def max_attempts_of(task: Task[..., Any]) -> int | None:
    """The task's cap on attempts, if it is a ``CloudTask`` that sets one."""
    return task.max_attempts if isinstance(task, CloudTask) else None
