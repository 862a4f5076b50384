"""When Cloud Tasks retries a failed attempt, and when it gives up."""

from __future__ import annotations

import math

UNLIMITED_ATTEMPTS = -1
# ldexp overflows past 2**1023; a delay that large is far beyond any max_backoff anyway.
_MAX_EXPONENT = 1000


def retry_delay(retry: int, *, min_backoff: float, max_backoff: float, max_doublings: int) -> float:
    """Seconds between a failure and the ``retry``-th retry (``retry`` counts from 1).

    The delay doubles ``max_doublings`` times, then grows linearly by the last doubled step, and
    never exceeds ``max_backoff``: min 10, max 300, doublings 3 gives 10, 20, 40, 80, 160, 240,
    300, 300, ... as in the RetryConfig documentation.
    """
    doublings = min(retry - 1, max_doublings, _MAX_EXPONENT)
    step = math.ldexp(min_backoff, doublings)
    linear_steps = max(retry - 1 - max_doublings, 0)
    return min(step * (1 + linear_steps), max_backoff)


def gives_up(
    attempts: int, elapsed: float, *, max_attempts: int, max_retry_duration: float
) -> bool:
    """Whether a task whose ``attempts``-th attempt just failed is dropped instead of retried.

    ``elapsed`` is the time since the first attempt. Cloud Tasks stops only once both limits are
    reached; an unlimited one (max_attempts -1, max_retry_duration 0) leaves the decision to the
    other, and with neither set the task keeps retrying.
    """
    attempts_reached = attempts >= max_attempts
    duration_reached = elapsed >= max_retry_duration
    if max_attempts == UNLIMITED_ATTEMPTS:
        return max_retry_duration > 0 and duration_reached
    if max_retry_duration == 0:
        return attempts_reached
    return attempts_reached and duration_reached


def retry_after_seconds(status: int, header: str | None) -> float | None:
    """The wait a 429 or 503 response asks for in ``Retry-After``, if it gives one in seconds."""
    if status not in (429, 503) or header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
