"""Conversions between epoch seconds and protobuf Timestamps."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

_MICROS = 1_000_000


def timestamp(seconds: float) -> Timestamp:
    """A Timestamp truncated to microseconds, the precision Cloud Tasks keeps for schedule times."""
    whole, micros = divmod(int(seconds * _MICROS), _MICROS)
    return Timestamp(seconds=whole, nanos=micros * 1000)


def whole_seconds(seconds: float) -> Timestamp:
    """A Timestamp truncated to seconds, as Cloud Tasks keeps a task's create_time."""
    return Timestamp(seconds=int(seconds))
