"""Resource names (``projects/P/locations/L/queues/Q/tasks/T``) and their validation."""

from __future__ import annotations

import re

from google.api_core.exceptions import InvalidArgument

from ..limits import QUEUE_ID, TASK_ID

_LOCATION = r"projects/[A-Za-z0-9\-:.]+/locations/[A-Za-z0-9-]+"
_LOCATION_NAME = re.compile(_LOCATION)
_QUEUE_NAME = re.compile(rf"({_LOCATION})/queues/([^/]*)")
_TASK_NAME = re.compile(rf"({_LOCATION}/queues/[^/]*)/tasks/(.*)")

# The wording of the first two and the last message is the real service's, as recorded by
# aertje/cloud-tasks-emulator's conformance goldens; the others follow the same pattern.
_BAD_QUEUE_NAME = (
    'Queue name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/'
    '<QUEUE_ID>".'
)
_BAD_TASK_ID = (
    'Task ID "{}" can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or '
    "underscores (_). Task ID must between 1 and 500 characters."
)
_BAD_LOCATION_NAME = (
    'Location name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>".'
)
_BAD_TASK_NAME = (
    'Task name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/'
    '<QUEUE_ID>/tasks/<TASK_ID>".'
)
_QUEUE_MISMATCH = (
    "The queue name from request ('{}') must be the same as the queue name in the named task "
    "('{}')."
)


def location_name(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def check_location(name: str) -> str:
    """``name`` if it is a location (the parent of queues)."""
    if not _LOCATION_NAME.fullmatch(name):
        raise InvalidArgument(_BAD_LOCATION_NAME)
    return name


def split_queue_name(name: str) -> tuple[str, str]:
    """``(location name, queue id)`` of a full queue name."""
    match = _QUEUE_NAME.fullmatch(name)
    if match is None or not QUEUE_ID.fullmatch(match[2]):
        raise InvalidArgument(_BAD_QUEUE_NAME)
    return match[1], match[2]


def check_queue_name(name: str) -> str:
    split_queue_name(name)
    return name


def split_task_name(name: str) -> tuple[str, str]:
    """``(queue name, task id)`` of a full task name."""
    match = _TASK_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(_BAD_TASK_NAME)
    check_queue_name(match[1])
    if not TASK_ID.fullmatch(match[2]):
        raise InvalidArgument(_BAD_TASK_ID.format(match[2]))
    return match[1], match[2]


def task_id_under(queue_name: str, task_name: str) -> str:
    """The id of ``task_name``, which a CreateTask request must place in its parent queue."""
    task_queue, task_id = split_task_name(task_name)
    if task_queue != queue_name:
        raise InvalidArgument(_QUEUE_MISMATCH.format(queue_name, task_queue))
    return task_id


def short_id(name: str) -> str:
    """The last path segment: a queue's or task's id."""
    return name.rpartition("/")[2]
