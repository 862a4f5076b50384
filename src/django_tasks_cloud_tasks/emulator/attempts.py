"""What an attempt sends, and what it changes in the task Cloud Tasks reports."""

from __future__ import annotations

from google.cloud import tasks_v2
from google.rpc import code_pb2, status_pb2

from .clock import timestamp
from .records import TaskEntry

NO_RESPONSE = -1

# The usual HTTP-to-gRPC mapping (google/rpc/code.proto) for Attempt.response_status.
_HTTP_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    409: code_pb2.ABORTED,
    412: code_pb2.FAILED_PRECONDITION,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}


def dispatch_headers(entry: TaskEntry) -> dict[str, str]:
    """The task's headers plus those Cloud Tasks adds to every attempt of an HTTP task."""
    retry = entry.task.dispatch_count
    headers = dict(entry.target.headers)
    headers["X-CloudTasks-QueueName"] = entry.queue.short_id
    headers["X-CloudTasks-TaskName"] = entry.task_id
    headers["X-CloudTasks-TaskRetryCount"] = str(retry)
    headers["X-CloudTasks-TaskExecutionCount"] = str(entry.execution_count)
    # From the stored Timestamp, so that it matches the schedule_time GetTask reports.
    eta = tasks_v2.Task.pb(entry.task).schedule_time
    headers["X-CloudTasks-TaskETA"] = f"{eta.seconds}.{eta.nanos // 1000:06d}"
    if retry:
        if entry.previous_response is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(entry.previous_response)
        # Recorded as present but empty for HTTP targets.
        headers["X-CloudTasks-TaskRetryReason"] = ""
    return headers


def started(task: tasks_v2.Task, now: float) -> tasks_v2.Task:
    """A copy of ``task`` counting an attempt dispatched at ``now``."""
    copy = tasks_v2.Task(task)
    pb = tasks_v2.Task.pb(copy)
    pb.dispatch_count += 1
    dispatched = timestamp(now)
    if pb.dispatch_count == 1:
        pb.first_attempt.dispatch_time.CopyFrom(dispatched)
    pb.last_attempt.Clear()
    pb.last_attempt.schedule_time.CopyFrom(pb.schedule_time)
    pb.last_attempt.dispatch_time.CopyFrom(dispatched)
    return copy


def answered(
    task: tasks_v2.Task, *, status: int, timed_out: bool, now: float, next_eta: float
) -> tasks_v2.Task:
    """A copy of ``task`` whose last attempt failed at ``now``, rescheduled for ``next_eta``."""
    copy = tasks_v2.Task(task)
    pb = tasks_v2.Task.pb(copy)
    if status != NO_RESPONSE:
        pb.response_count += 1
    pb.last_attempt.response_time.CopyFrom(timestamp(now))
    pb.last_attempt.response_status.CopyFrom(_failure_status(status, timed_out=timed_out))
    pb.schedule_time.CopyFrom(timestamp(next_eta))
    return copy


def _failure_status(status: int, *, timed_out: bool) -> status_pb2.Status:
    if status == NO_RESPONSE:
        if timed_out:
            return status_pb2.Status(
                code=code_pb2.DEADLINE_EXCEEDED, message="The dispatch deadline was exceeded."
            )
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message="The target did not answer.")
    # Only failures get here: a 2xx answer deletes the task.
    if status in _HTTP_CODES:
        code = _HTTP_CODES[status]
    elif 400 <= status < 500:
        code = code_pb2.FAILED_PRECONDITION
    elif 500 <= status < 600:
        code = code_pb2.INTERNAL
    else:
        code = code_pb2.UNKNOWN
    return status_pb2.Status(code=code, message=f"HTTP status code {status}")
