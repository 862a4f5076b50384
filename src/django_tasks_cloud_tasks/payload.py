"""The wire format: the JSON body a Cloud Tasks HTTP task carries to the execute view.

``{task_id, task_path, args, kwargs, queue_name, backend, priority, takes_context, enqueued_at}``,
as published by 0.1.0. Fields may be added, never removed. Decoding is the edge where an untrusted
body becomes typed values: everything past ``decode`` trusts them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

from .exceptions import Refused

# Cloud Tasks refuses tasks over 1 MiB; the body is most of a task, so no valid body is larger.
MAX_BODY_BYTES = 1024 * 1024
_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_NAME = re.compile(r"[\w.-]{1,128}")


class InvalidPayload(Refused, ValueError):
    """The body is not a task this package sent (400); the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)


def _refuse_constant(name: str) -> None:
    raise InvalidPayload(f"body is not valid JSON ({name} is not a JSON value)")


# Strict JSON, as the backend writes it: Python's json also reads NaN and Infinity.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


@dataclass(frozen=True, slots=True)
class Payload:
    task_id: str
    task_path: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue_name: str
    backend: str
    priority: int
    takes_context: bool
    enqueued_at: datetime | None

    def encode(self) -> bytes:
        document = {
            "task_id": self.task_id,
            "task_path": self.task_path,
            "args": self.args,
            "kwargs": self.kwargs,
            "queue_name": self.queue_name,
            "backend": self.backend,
            "priority": self.priority,
            "takes_context": self.takes_context,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
        }
        _refuse_non_str_keys(self.task_path, self.args)
        _refuse_non_str_keys(self.task_path, self.kwargs)
        try:
            text = json.dumps(
                document, separators=(",", ":"), allow_nan=False, default=_refuse_non_json
            )
        except ValueError as exc:  # NaN or infinity
            raise TypeError(
                f"Arguments of task {self.task_path} are not JSON-serialisable: {exc}."
            ) from None
        except TypeError as exc:
            raise TypeError(
                f"Arguments of task {self.task_path} are not JSON-serialisable: {exc}"
            ) from None
        return text.encode()


def _refuse_non_json(value: object) -> None:
    raise TypeError(
        f"{value!r} (of type {type(value).__qualname__}) is not JSON-serialisable. Pass JSON "
        "types only (str, int, float, bool, None, list, dict with str keys): convert dates with "
        ".isoformat(), UUIDs and Decimals with str(), and model instances to their primary key."
    )


def _refuse_non_str_keys(task_path: str, value: object) -> None:
    """Refuse dict keys JSON would turn into strings: the task would receive ``{"1": ...}``
    while ``TaskResult.args`` (normalised by Django) holds ``{1: ...}``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"Arguments of task {task_path} are not JSON-serialisable: dict key {key!r} "
                    f"(of type {type(key).__qualname__}) is not a string, and JSON would turn it "
                    "into one, so the task would receive a different dict. Use str keys."
                )
            _refuse_non_str_keys(task_path, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_non_str_keys(task_path, item)


def decode(body: bytes) -> Payload:
    """Parse and validate a request body, raising ``InvalidPayload`` with the reason."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidPayload(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = _DECODER.decode(body.decode())
    except InvalidPayload:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload(f"body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise InvalidPayload("body must be a JSON object")
    return Payload(
        task_id=_string(document, "task_id", _NAME, required=True),
        task_path=_string(document, "task_path", _DOTTED_PATH, required=True),
        args=_args(document.get("args", [])),
        kwargs=_kwargs(document.get("kwargs", {})),
        queue_name=_string(document, "queue_name", _NAME) or DEFAULT_TASK_QUEUE_NAME,
        backend=_string(document, "backend", _NAME) or DEFAULT_TASK_BACKEND_ALIAS,
        priority=_priority(document.get("priority", 0)),
        takes_context=_boolean(document.get("takes_context", False)),
        enqueued_at=_datetime(document.get("enqueued_at")),
    )


def _string(
    document: dict[str, Any], field: str, pattern: re.Pattern[str], *, required: bool = False
) -> str:
    value = document.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidPayload(f"'{field}' must be a string")
    if len(value) > 500 or not pattern.fullmatch(value):
        raise InvalidPayload(f"'{field}' is not a valid {field.replace('_', ' ')}")
    return value


def _args(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidPayload("'args' must be a list")
    return value


def _kwargs(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPayload("'kwargs' must be an object")
    # JSON object keys are always strings; they must also be usable as keyword names.
    if not all(key.isidentifier() for key in value):
        raise InvalidPayload("'kwargs' keys must be Python identifiers")
    return value


def _priority(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPayload("'priority' must be an integer")
    if not TASK_MIN_PRIORITY <= value <= TASK_MAX_PRIORITY:
        raise InvalidPayload(
            f"'priority' must be between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}"
        )
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidPayload("'takes_context' must be true or false")
    return value


def _datetime(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidPayload("'enqueued_at' must be an ISO 8601 date-time string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidPayload("'enqueued_at' must be an ISO 8601 date-time string") from None
