from typing import Any

from django.tasks import task


@task
def noop(*args: Any, **kwargs: Any) -> None:
    """Does nothing: the benchmark measures the machinery around a task, not the task."""
