"""Tasks the test suite enqueues; each records its call so tests can assert on what ran."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.tasks import TaskContext, task

from django_tasks_cloud_tasks import PermanentFailure
from django_tasks_cloud_tasks import task as cloud_task


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int | None = None
    task_id: str | None = None
    priority: int | None = None
    queue_name: str | None = None


class Recorder:
    """Collects calls from tasks running in server threads; tests wait on it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._changed = threading.Condition()

    def record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Call]:
        """Wait until at least ``count`` calls arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.calls) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} task calls within {timeout}s, got {self.calls}"
                    )
                self._changed.wait(remaining)
            return list(self.calls)

    def named(self, name: str) -> list[Call]:
        with self._changed:
            return [call for call in self.calls if call.name == name]

    def clear(self) -> None:
        with self._changed:
            self.calls.clear()


recorder = Recorder()


def _record_context(name: str, context: TaskContext, *args: Any, **kwargs: Any) -> None:
    result = context.task_result
    recorder.record(
        Call(
            name,
            args,
            kwargs,
            attempt=context.attempt,
            task_id=result.id,
            priority=result.task.priority,
            queue_name=result.task.queue_name,
        )
    )


@task
def add(a: int, b: int) -> int:
    recorder.record(Call("add", (a, b)))
    return a + b


@task
def greet(name: str, *, greeting: str = "Hello") -> str:
    recorder.record(Call("greet", (name,), {"greeting": greeting}))
    return f"{greeting}, {name}!"


@task(takes_context=True)
def describe(context: TaskContext, message: str) -> str:
    _record_context("describe", context, message)
    return f"{context.task_result.id}:{context.attempt}:{message}"


@task(takes_context=True)
def fails_first_attempt(context: TaskContext) -> int:
    _record_context("fails_first_attempt", context)
    if context.attempt < 2:
        raise RuntimeError("the first attempt always fails")
    return context.attempt


@task
def always_fails() -> None:
    recorder.record(Call("always_fails"))
    raise ValueError("this task always fails")


@task(priority=50, takes_context=True)
def urgent(context: TaskContext) -> None:
    _record_context("urgent", context)


@task(queue_name="high-priority", takes_context=True)
def on_high_priority_queue(context: TaskContext) -> None:
    _record_context("on_high_priority_queue", context)


@task
async def async_add(a: int, b: int) -> int:
    recorder.record(Call("async_add", (a, b), {"thread": threading.current_thread().name}))
    return a + b


@task
def returns_non_json() -> object:
    recorder.record(Call("returns_non_json"))
    return object()


@task
def accepts_anything(*args: Any, **kwargs: Any) -> None:
    recorder.record(Call("accepts_anything", args, kwargs))


def not_a_task() -> None:
    """A plain function: the view must refuse it, not call it."""
    recorder.record(Call("not_a_task"))


NOT_A_TASK_EITHER = "a string"


# Set by a test to end the running `slow` tasks at the moment it chooses.
release_slow = threading.Event()


@task(takes_context=True)
def slow(context: TaskContext, seconds: float) -> float:
    """Runs for ``seconds`` or until released: long enough for duplicate deliveries to arrive."""
    _record_context("slow", context, seconds)
    release_slow.wait(seconds)
    return seconds


@task
def user_exists(username: str) -> bool:
    """Whether the enqueuing transaction's data is visible to the task."""
    from django.contrib.auth.models import User

    exists = User.objects.filter(username=username).exists()
    recorder.record(Call("user_exists", (username,), {"exists": exists}))
    return exists


class CardDeclined(PermanentFailure):
    """A failure no retry can fix."""


@task
def declines_the_card() -> None:
    recorder.record(Call("declines_the_card"))
    raise CardDeclined("card 4242 declined")


# The package's decorator, which takes max_attempts on Django 6.0 too (6.1's @task passes it on).
@cloud_task(max_attempts=2, takes_context=True)
def fails_twice_at_most(context: TaskContext) -> None:
    _record_context("fails_twice_at_most", context)
    raise RuntimeError("secret=hunter2")


@task
def returns_a_set() -> object:
    recorder.record(Call("returns_a_set"))
    return {1, 2}


@task
def returns_nan() -> float:
    recorder.record(Call("returns_nan"))
    return float("nan")


@task
def returns_a_nul_character() -> str:
    """PostgreSQL's JSON cannot hold U+0000; SQLite's can."""
    recorder.record(Call("returns_a_nul_character"))
    return "nul \x00 here"


@task(takes_context=True)
async def async_slow_on_first_attempt(context: TaskContext, seconds: float) -> int:
    """Awaits ``seconds`` on its first attempt, long enough to be interrupted; then finishes."""
    _record_context("async_slow_started", context, seconds)
    if context.attempt == 1:
        await asyncio.sleep(seconds)
    recorder.record(Call("async_slow_finished", attempt=context.attempt))
    return context.attempt


task_logger = logging.getLogger("tests.tasks")


@task(takes_context=True)
def logs_and_fails_first_attempt(context: TaskContext, message: str) -> int:
    """Logs on every attempt and fails the first: its logs and spans, attempt by attempt."""
    task_logger.info("%s (attempt %d)", message, context.attempt)
    _record_context("logs_and_fails_first_attempt", context, message)
    if context.attempt < 2:
        raise RuntimeError("the first attempt always fails")
    return context.attempt


@task(takes_context=True)
async def async_logs(context: TaskContext, message: str) -> None:
    task_logger.info("%s (async)", message)
    _record_context("async_logs", context, message)
