"""What Cloud Tasks accepts, stated once for the backend, its configuration and the emulator.

Sources: the ``google-cloud-tasks`` docstrings of ``Queue.name``, ``Task.name``, ``RateLimits``,
``BatchCreateTasksRequest`` and ``BatchDeleteTasksRequest``; ``google-cloud-scheduler``'s of
``Job.name``.
"""

from __future__ import annotations

import re

# A queue id: letters, digits and hyphens, at most 100 characters.
QUEUE_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
# A task id: letters, digits, hyphens and underscores, at most 500 characters.
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
# A queue's rate limits: dispatches per second, and attempts in flight at once.
MAX_DISPATCHES_PER_SECOND = 500.0
MAX_CONCURRENT_DISPATCHES = 5000
# A Cloud Scheduler job id (a schedule's name): the same characters as a task id.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
# Tasks per BatchCreateTasks call, and names per BatchDeleteTasks call.
MAX_BATCH_CREATE = 100
MAX_BATCH_DELETE = 1000
