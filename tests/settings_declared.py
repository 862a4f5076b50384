"""The test settings with queues and a schedule declared, for ``manage.py cloudtasks_emulator``."""

from tests.settings import *  # noqa: F403
from tests.settings import TASKS

TASKS["default"]["OPTIONS"] = {
    **TASKS["default"]["OPTIONS"],
    "CLOUD_TASKS_QUEUES": {"emails": {"max_attempts": 4, "max_dispatches_per_second": 2}},
    "PRIORITY_QUEUES": {"urgent": 50},
    "SCHEDULES": {"digest": {"task": "tests.tasks.add", "cron": "0 8 * * 1", "args": [1, 2]}},
}
