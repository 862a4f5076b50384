"""The least a Cloud Tasks backend for ``django.tasks`` must do to enqueue: a bound, not a backend.

``Task.enqueue()`` through it validates the task as Django's base backend does, encodes the same
JSON body, sends one named CreateTask with the raw client, builds the ``TaskResult`` (whose
arguments Django normalises) and sends the ``task_enqueued`` signal. It skips everything that makes
enqueue trustworthy or helpful: no retry or deadline, no error translation, no routing or queue
checks, no size limit, no refusal of dict keys JSON would change, no trace context, no result
store, no waiting for a commit. Its throughput against the raw client's is the ratio no correct
backend can beat on this machine.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.signals import task_enqueued
from django.utils import timezone
from google.cloud.tasks_v2 import CloudTasksClient


class LeastBackend(BaseTaskBackend):
    supports_defer = True
    supports_priority = True

    def __init__(self, client: CloudTasksClient, parent: str, url: str) -> None:
        super().__init__(alias="default", params={})
        self.client = client
        self.parent = parent
        self.url = url

    def enqueue(
        self, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[Any, Any]:
        self.validate_task(task)
        result_id = str(uuid.uuid4())
        enqueued_at = timezone.now()
        body = json.dumps(
            {
                "task_id": result_id,
                "task_path": task.module_path,
                "args": args,
                "kwargs": kwargs,
                "queue_name": task.queue_name,
                "backend": self.alias,
                "priority": task.priority,
                "takes_context": task.takes_context,
                "enqueued_at": enqueued_at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()
        cloud_task = {
            "name": f"{self.parent}/tasks/{result_id}",
            "http_request": {
                "url": self.url,
                "headers": {"Content-Type": "application/json"},
                "body": body,
            },
        }
        self.client.create_task(request={"parent": self.parent, "task": cloud_task})
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=result_id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result
