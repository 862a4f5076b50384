import os
import time
from typing import Any

from django.tasks import TaskContext, task


@task
def noop(*args: Any, **kwargs: Any) -> None:
    """Does nothing: the benchmark measures the machinery around a task, not the task."""


# The soak test's task (benchmarks/soak.py): notes each start and end in SOAK_LOG, one line each,
# so that the soak can count executions whatever the result store says.
_soak_log: list[int] = []


def _note(event: str, task_id: str, attempt: int) -> None:
    if not _soak_log:
        _soak_log.append(os.open(os.environ["SOAK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    # One write of a short line on an O_APPEND file: lines of concurrent writers never mix.
    line = f"{event} {task_id} {time.time():.6f} {os.getpid()} {attempt}\n"
    os.write(_soak_log[0], line.encode())


@task(takes_context=True)
def soak(context: TaskContext, seconds: float) -> None:
    """Works for ``seconds`` (sleeps, as a task waiting on I/O does)."""
    _note("start", context.task_result.id, context.attempt)
    time.sleep(seconds)
    _note("end", context.task_result.id, context.attempt)
