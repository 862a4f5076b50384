"""A project that set up the backend but not where its queues are (for configuration errors)."""

from tests.settings import *  # noqa: F403

TASKS = {"default": {"BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend", "QUEUES": []}}
