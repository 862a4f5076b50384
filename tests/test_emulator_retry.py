"""The emulator's pure pieces: backoff, the give-up rule, rate limiting and name tombstones."""

from __future__ import annotations

import pytest

from django_tasks_cloud_tasks.emulator.ratelimit import TokenBucket
from django_tasks_cloud_tasks.emulator.retry import gives_up, retry_after_seconds, retry_delay
from django_tasks_cloud_tasks.emulator.tombstones import Tombstones


def test_backoff_doubles_then_grows_linearly_up_to_the_cap() -> None:
    # The worked example in the RetryConfig documentation.
    delays = [
        retry_delay(retry, min_backoff=10, max_backoff=300, max_doublings=3)
        for retry in range(1, 9)
    ]
    assert delays == [10, 20, 40, 80, 160, 240, 300, 300]


def test_backoff_defaults_reach_the_one_hour_cap() -> None:
    def delay(retry: int) -> float:
        return retry_delay(retry, min_backoff=0.1, max_backoff=3600, max_doublings=16)

    assert delay(1) == pytest.approx(0.1)
    assert delay(2) == pytest.approx(0.2)
    assert delay(16) == pytest.approx(0.1 * 2**15)
    assert delay(17) == 3600
    assert delay(10_000) == 3600


def test_backoff_survives_absurd_doublings() -> None:
    assert retry_delay(5000, min_backoff=1, max_backoff=60, max_doublings=10**9) == 60


@pytest.mark.parametrize(
    ("attempts", "elapsed", "max_attempts", "max_retry_duration", "expected"),
    [
        (99, 0, 100, 0, False),
        (100, 0, 100, 0, True),
        (1, 0, 1, 0, True),
        # Both limits set: both must be reached.
        (100, 10, 100, 60, False),
        (5, 120, 100, 60, False),
        (100, 60, 100, 60, True),
        # Unlimited attempts: the duration decides; with no duration either, never give up.
        (10_000, 59, -1, 60, False),
        (3, 60, -1, 60, True),
        (10_000, 10**6, -1, 0, False),
    ],
)
def test_gives_up_only_when_every_set_limit_is_reached(
    attempts: int, elapsed: float, max_attempts: int, max_retry_duration: float, expected: bool
) -> None:
    outcome = gives_up(
        attempts, elapsed, max_attempts=max_attempts, max_retry_duration=max_retry_duration
    )
    assert outcome is expected


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, "2", 2.0),
        (503, "0.5", 0.5),
        (500, "2", None),
        (503, None, None),
        (503, "Wed, 21 Oct 2015 07:28:00 GMT", None),
        (429, "-1", None),
        (429, "nan", None),
    ],
)
def test_retry_after_counts_only_for_429_and_503_in_seconds(
    status: int, header: str | None, expected: float | None
) -> None:
    assert retry_after_seconds(status, header) == expected


def test_token_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    assert bucket.take(100.0)
    assert bucket.take(100.0)
    assert not bucket.take(100.0)
    assert bucket.next_token_at(100.0) == pytest.approx(100.1)
    assert bucket.take(100.1)
    # A long idle spell refills only up to the burst size.
    assert [bucket.take(200.0) for _ in range(3)] == [True, True, False]


def test_tombstones_expire_after_their_window() -> None:
    tombstones = Tombstones(window=10)
    tombstones.add("a", now=0)
    tombstones.add("b", now=5)
    assert tombstones.contains("a", now=9.9)
    assert not tombstones.contains("a", now=10)
    assert tombstones.contains("b", now=14)
    # Burying a name again restarts its window.
    tombstones.add("b", now=14)
    assert tombstones.contains("b", now=20)
    tombstones.clear()
    assert not tombstones.contains("b", now=20)
