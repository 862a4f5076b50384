"""One console line per attempt of a task, instead of a traceback per retry.

Django logs a failed task with its traceback (``django.tasks``) and the 500 answered to Cloud Tasks
with another (``django.request``); a task retried every few seconds would bury the console. The
demo's settings silence both for deliveries, and this line says what happened; the traceback is in
the result store (and the page shows its last line).
"""

from __future__ import annotations

import logging
from typing import Any

from django.tasks import TaskResult, TaskResultStatus

logger = logging.getLogger("demo.outcomes")


def log_outcome(sender: Any, task_result: TaskResult[..., Any], **kwargs: Any) -> None:
    name = task_result.task.name
    attempt = task_result.attempts
    if task_result.status == TaskResultStatus.SUCCESSFUL:
        logger.info("%s: attempt %d succeeded", name, attempt)
    else:
        error = task_result.errors[-1].traceback.rstrip().rpartition("\n")[2]
        logger.warning("%s: attempt %d failed: %s", name, attempt, error)
