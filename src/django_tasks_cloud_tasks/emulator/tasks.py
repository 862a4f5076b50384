"""CreateTask's checks on a new task, and what Cloud Tasks fills in before storing it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.api_core.exceptions import InvalidArgument, MethodNotImplemented
from google.cloud import tasks_v2

from .clock import timestamp, whole_seconds
from .names import task_id_under
from .queues import retry_overrides

MAX_TASK_BYTES = 1024 * 1024
MAX_SCHEDULE_AHEAD = 30 * 24 * 3600.0
MAX_URL_LENGTH = 2083
MAX_HEADER_BYTES = 80 * 1024
MIN_DEADLINE_MS = 15_000
MAX_DEADLINE_MS = 30 * 60_000
DEFAULT_DEADLINE_MS = 10 * 60_000
USER_AGENT = "Google-Cloud-Tasks"

_Method = tasks_v2.HttpMethod
_BODY_METHODS = frozenset({_Method.POST, _Method.PUT, _Method.PATCH})
# Cloud Tasks computes these itself whatever the task says.
_COMPUTED_HEADERS = frozenset({"host", "content-length"})
_DISPATCH_HEADER_PREFIX = "x-cloudtasks-"


@dataclass(frozen=True, slots=True)
class Target:
    """The HTTP request a task's attempts send, read once from the stored task."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: float
    oidc_email: str | None
    oidc_audience: str


@dataclass(frozen=True, slots=True)
class NewTask:
    task: tasks_v2.Task
    task_id: str | None
    eta: float
    target: Target
    # The retry settings the task sets for itself (Task.retry_config), if any.
    retry: dict[str, Any] | None = None


def prepare(queue_name: str, task: tasks_v2.Task, now: float) -> NewTask:
    """Check a CreateTask request's ``task`` for ``queue_name`` and complete it for storage.

    Mutates ``task``: the schedule time, create time, deadline, method and User-Agent are set and
    the output-only fields reset. Its name stays empty when the server is to pick the id.
    """
    # Works on the raw protobuf message: CreateTask is the hot path, and each proto-plus field
    # access costs microseconds.
    pb = tasks_v2.Task.pb(task)
    task_id = task_id_under(queue_name, pb.name) if pb.name else None
    if pb.HasField("app_engine_http_request"):
        raise MethodNotImplemented(
            "The Cloud Tasks emulator supports only HTTP target tasks: use http_request, "
            "not app_engine_http_request."
        )
    if not pb.http_request.url:
        raise InvalidArgument("An HTTP target task needs http_request.url.")
    if pb.ByteSize() > MAX_TASK_BYTES:
        raise InvalidArgument(f"Task size exceeds the maximum of {MAX_TASK_BYTES} bytes.")
    timeout = _deadline(pb)
    target = _prepare_http(pb.http_request, timeout)
    eta = _schedule_time(pb, now)
    pb.schedule_time.CopyFrom(timestamp(eta))
    pb.create_time.CopyFrom(whole_seconds(now))
    pb.dispatch_count = 0
    pb.response_count = 0
    pb.view = tasks_v2.Task.View.BASIC
    pb.ClearField("first_attempt")
    pb.ClearField("last_attempt")
    return NewTask(task=task, task_id=task_id, eta=eta, target=target, retry=_retry(pb))


def restored(task: tasks_v2.Task) -> NewTask:
    """A task stored by ``prepare`` earlier (and saved to a file), ready to be scheduled again."""
    pb = tasks_v2.Task.pb(task)
    deadline = pb.dispatch_deadline
    http = type(pb.http_request)()
    # On a copy: the stored task keeps the headers it had.
    http.CopyFrom(pb.http_request)
    target = _prepare_http(http, deadline.seconds + deadline.nanos / 1e9)
    eta = pb.schedule_time.seconds + pb.schedule_time.nanos / 1e9
    _, task_id = pb.name.rsplit("/", 1)
    return NewTask(task=task, task_id=task_id, eta=eta, target=target, retry=_retry(pb))


def _retry(pb: Any) -> dict[str, Any] | None:
    # Task.retry_config is honoured, as google-cloud-tasks documents the field (2.26: "If
    # present, this overrides the Queue.retry_config for this task"), which is newer than the
    # Queue.retry_config text saying retry settings cannot be set on tasks. Older clients have
    # no such field.
    if "retry_config" not in pb.DESCRIPTOR.fields_by_name or not pb.HasField("retry_config"):
        return None
    return retry_overrides(pb.retry_config) or None


def _prepare_http(http: Any, timeout: float) -> Target:
    """Check and complete the raw ``HttpRequest`` message ``http``."""
    url: str = http.url
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidArgument("HttpRequest.url must start with 'http://' or 'https://'.")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"HttpRequest.url must be at most {MAX_URL_LENGTH} characters.")
    method = _Method(http.http_method or _Method.POST)
    body: bytes = http.body
    if body and method not in _BODY_METHODS:
        raise InvalidArgument(f"A body is allowed only with POST, PUT or PATCH, not {method.name}.")
    if http.HasField("oauth_token"):
        raise MethodNotImplemented(
            "The Cloud Tasks emulator cannot mint OAuth tokens: use an OIDC token (oidc_token)."
        )
    headers = {k: v for k, v in http.headers.items() if k.lower() != "user-agent"}
    headers["User-Agent"] = USER_AGENT
    if sum(len(k) + len(v) for k, v in headers.items()) >= MAX_HEADER_BYTES:
        raise InvalidArgument("HttpRequest.headers must total less than 80 KB.")
    http.http_method = method
    http.headers.clear()
    http.headers.update(headers)
    oidc_email = None
    oidc_audience = url
    if http.HasField("oidc_token"):
        oidc = http.oidc_token
        if not oidc.service_account_email:
            raise InvalidArgument("OidcToken.service_account_email is required.")
        oidc_email = oidc.service_account_email
        oidc_audience = oidc.audience or url
    return Target(
        method=method.name,
        url=url,
        headers={k: v for k, v in headers.items() if _user_settable(k)},
        body=body,
        timeout=timeout,
        oidc_email=oidc_email,
        oidc_audience=oidc_audience,
    )


def _user_settable(header: str) -> bool:
    """Whether a stored header is sent as is, rather than replaced by Cloud Tasks' own."""
    lowered = header.lower()
    return lowered not in _COMPUTED_HEADERS and not lowered.startswith(_DISPATCH_HEADER_PREFIX)


def _deadline(pb: Any) -> float:
    """The attempt timeout in seconds; sets the raw task's deadline, truncated to milliseconds."""
    deadline = pb.dispatch_deadline
    if pb.HasField("dispatch_deadline"):
        millis: int = deadline.seconds * 1000 + deadline.nanos // 1_000_000
        if not MIN_DEADLINE_MS <= millis <= MAX_DEADLINE_MS:
            raise InvalidArgument(
                "Task.dispatch_deadline must be between 15 seconds and 30 minutes."
            )
    else:
        millis = DEFAULT_DEADLINE_MS
    deadline.seconds, rest = divmod(millis, 1000)
    deadline.nanos = rest * 1_000_000
    return millis / 1000


def _schedule_time(pb: Any, now: float) -> float:
    if not pb.HasField("schedule_time"):
        return now
    requested: float = pb.schedule_time.seconds + pb.schedule_time.nanos / 1e9
    eta = max(requested, now)
    if eta > now + MAX_SCHEDULE_AHEAD:
        raise InvalidArgument("Task.schedule_time must be at most 30 days in the future.")
    return eta
