"""Queue configuration: the defaults an API-created queue gets, and the limits on what is set."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from google.api_core.exceptions import InvalidArgument, MethodNotImplemented
from google.cloud import tasks_v2

from ..limits import MAX_CONCURRENT_DISPATCHES, MAX_DISPATCHES_PER_SECOND
from .retry import UNLIMITED_ATTEMPTS

# What `gcloud tasks queues describe` shows for a queue created through the API.
DEFAULT_RATE = 500.0
DEFAULT_BURST = 100
DEFAULT_CONCURRENCY = 1000
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF = timedelta(seconds=0.1)
DEFAULT_MAX_BACKOFF = timedelta(seconds=3600)
DEFAULT_MAX_DOUBLINGS = 16


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's dispatch limits as plain numbers, read once instead of on every dispatch."""

    rate: float
    burst: int
    concurrency: int
    max_attempts: int
    min_backoff: float
    max_backoff: float
    max_doublings: int
    max_retry_duration: float


def configure(queue: tasks_v2.Queue) -> QueueSettings:
    """Fill in the defaults for what ``queue`` leaves at zero, check the rest, mark it RUNNING.

    Proto3 cannot tell an unset number from 0, so 0 means "the default", as in the real API.
    Mutates ``queue``.
    """
    # Clients before google-cloud-tasks 2.25 have no http_target field at all.
    routing = ("http_target", "app_engine_routing_override")
    if any(field in type(queue).meta.fields and field in queue for field in routing):
        raise MethodNotImplemented(
            "The Cloud Tasks emulator does not support queue-level routing "
            "(http_target, app_engine_routing_override): set the URL on each task instead."
        )
    # Sub-message wrappers write through to ``queue``.
    rates = queue.rate_limits
    retry = queue.retry_config
    rates.max_dispatches_per_second = rates.max_dispatches_per_second or DEFAULT_RATE
    # Output only in the real API, where Cloud Tasks picks it; honoured here so tests can shape
    # bursts.
    rates.max_burst_size = rates.max_burst_size or DEFAULT_BURST
    rates.max_concurrent_dispatches = rates.max_concurrent_dispatches or DEFAULT_CONCURRENCY
    retry.max_attempts = retry.max_attempts or DEFAULT_MAX_ATTEMPTS
    retry.min_backoff = retry.min_backoff or DEFAULT_MIN_BACKOFF
    retry.max_backoff = retry.max_backoff or DEFAULT_MAX_BACKOFF
    retry.max_doublings = retry.max_doublings or DEFAULT_MAX_DOUBLINGS
    tasks_v2.Queue.pb(queue).state = tasks_v2.Queue.State.RUNNING
    settings = QueueSettings(
        rate=rates.max_dispatches_per_second,
        burst=rates.max_burst_size,
        concurrency=rates.max_concurrent_dispatches,
        max_attempts=retry.max_attempts,
        min_backoff=retry.min_backoff.total_seconds(),
        max_backoff=retry.max_backoff.total_seconds(),
        max_doublings=retry.max_doublings,
        max_retry_duration=retry.max_retry_duration.total_seconds(),
    )
    _check(settings, "Invalid queue configuration")
    return settings


def retry_overrides(retry: Any) -> dict[str, Any]:
    """The fields a task's raw ``RetryConfig`` message sets, durations in seconds.

    As for queues, proto3 cannot tell an unset number from 0: a field left at 0 keeps the
    queue's value.
    """
    overrides: dict[str, Any] = {}
    for field in ("max_attempts", "max_doublings"):
        if value := getattr(retry, field):
            overrides[field] = value
    for field in ("min_backoff", "max_backoff", "max_retry_duration"):
        duration = getattr(retry, field)
        if duration.seconds or duration.nanos:
            overrides[field] = duration.seconds + duration.nanos / 1e9
    return overrides


def with_overrides(settings: QueueSettings, overrides: dict[str, Any] | None) -> QueueSettings:
    """``settings`` with a task's own retry settings in place of the queue's.

    Raises InvalidArgument if the result is inconsistent (say, a task's min_backoff above its
    queue's max_backoff).
    """
    if not overrides:
        return settings
    merged = replace(settings, **overrides)
    _check(merged, "Invalid task retry_config")
    return merged


def _check(settings: QueueSettings, problem: str) -> None:
    problems = []
    if not 0 < settings.rate <= MAX_DISPATCHES_PER_SECOND:
        problems.append(f"max_dispatches_per_second must be in (0, {MAX_DISPATCHES_PER_SECOND:g}]")
    if settings.burst < 1:
        problems.append("max_burst_size must be positive")
    if not 0 < settings.concurrency <= MAX_CONCURRENT_DISPATCHES:
        problems.append(f"max_concurrent_dispatches must be in [1, {MAX_CONCURRENT_DISPATCHES}]")
    if settings.max_attempts < UNLIMITED_ATTEMPTS:
        problems.append("max_attempts must be positive, or -1 for unlimited")
    if settings.min_backoff < 0 or settings.max_retry_duration < 0:
        problems.append("durations must not be negative")
    if settings.min_backoff > settings.max_backoff:
        problems.append("min_backoff must not exceed max_backoff")
    if settings.max_doublings < 0:
        problems.append("max_doublings must not be negative")
    if problems:
        raise InvalidArgument(f"{problem}: " + "; ".join(problems) + ".")
