"""The result store's table: one row per task result, when ``STORE_RESULTS`` is on."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask

from .resolution import resolve_task


class TaskRecord(models.Model):
    """What Django's ``TaskResult`` holds, plus the Cloud Tasks task that carries it."""

    id = models.CharField(primary_key=True, max_length=128, verbose_name="result id")
    task_path = models.CharField(max_length=500)
    queue_name = models.CharField(max_length=128)
    priority = models.SmallIntegerField(default=0)
    backend = models.CharField(max_length=128)
    status = models.CharField(
        max_length=10, choices=TaskResultStatus.choices, default=TaskResultStatus.READY
    )
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    return_value = models.JSONField(null=True, blank=True)
    # [{"exception_class_path": ..., "traceback": ...}], one per failed attempt.
    errors = models.JSONField(default=list)
    # One per attempt, in order; "unknown" where the store did not see the attempt.
    worker_ids = models.JSONField(default=list)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Empty until Cloud Tasks has the task: a READY row without it is in the outbox.
    cloud_task_name = models.CharField(max_length=500, blank=True, default="")
    # The task's run_after, so that recovery can create a task the way it was enqueued.
    run_after = models.DateTimeField(null=True, blank=True)
    # While RUNNING: until when the running attempt's claim holds. The attempt renews it while
    # the task runs; a delivery that finds it past takes the task over (see leases.py).
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "task result"
        indexes = [
            # The admin's status filter, and pruning finished results by age.
            models.Index(fields=["status", "finished_at"], name="ctasks_status_finished"),
            models.Index(fields=["queue_name"], name="ctasks_queue"),
            models.Index(fields=["task_path"], name="ctasks_task_path"),
            # The admin lists the newest first.
            models.Index(fields=["enqueued_at"], name="ctasks_enqueued"),
            # No index on lease_expires_at: recovery and the admin's filter look for lapsed leases
            # among RUNNING rows, which the status index above narrows to the tasks in flight,
            # while an index would be written by the two status changes of every delivery.
        ]

    def __str__(self) -> str:
        return f"{self.task_path} ({self.id})"

    def to_task_result(self) -> TaskResult[..., Any]:
        """The ``TaskResult`` this row records, its task resolved from ``task_path``."""
        task = resolve_task(self.task_path)
        if task is None:
            raise InvalidTask(
                f"{self.task_path!r} is not a django.tasks.Task of this project (any more?), so "
                f"result {self.id!r} cannot be loaded."
            )
        result: TaskResult[..., Any] = TaskResult(
            task=task.using(
                queue_name=self.queue_name,
                priority=self.priority,
                backend=self.backend,
                run_after=self.run_after,
            ),
            id=self.id,
            status=TaskResultStatus(self.status),
            enqueued_at=self.enqueued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            last_attempted_at=self.last_attempted_at,
            args=self.args,
            kwargs=self.kwargs,
            backend=self.backend,
            errors=[TaskError(**error) for error in self.errors],
            worker_ids=list(self.worker_ids),
        )
        object.__setattr__(result, "_return_value", self.return_value)
        return result
