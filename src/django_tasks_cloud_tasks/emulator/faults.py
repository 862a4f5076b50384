"""Fault injection: the next calls of a gRPC method fail, fail after the work, or answer late.

A test of retry logic needs a server that misbehaves on cue, in the three ways real networks do:
the call is refused (``status``: the work is not done), the work is done but the answer is lost
(``status`` with ``after_success``: the client sees an error for a call that succeeded), or the
answer is late (``delay``). Every RPC passes through ``service._unary``, which asks ``Faults``
whether to misbehave; a plan applies to the next ``times`` calls of its method, in the order the
plans were added.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

# What a delayed answer checks between naps: a client that gave up ends the wait early.
_NAP = 0.05


@dataclass
class Fault:
    """One plan: how the next ``times`` calls of ``method`` misbehave (``None``: every call)."""

    method: str
    status: grpc.StatusCode | None = None
    after_success: bool = False
    delay: float = 0.0
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.status is grpc.StatusCode.OK:
            raise ValueError("status OK is no fault; leave status out for a delay alone")
        if self.after_success and self.status is None:
            raise ValueError("after_success needs the status to answer with")
        if self.delay < 0 or (self.times is not None and self.times < 1):
            raise ValueError("delay must be >= 0 and times >= 1 (or None: every call)")
        if self.status is None and not self.delay:
            raise ValueError("a fault needs a status, a delay or both")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """A fault from the command line: ``METHOD[,status=CODE][,after-success][,delay=S]
        [,times=N|always]``, e.g. ``CreateTask,status=UNAVAILABLE,times=2``."""
        method, *parts = [part.strip() for part in spec.split(",")]
        fields: dict[str, Any] = {}
        for part in parts:
            key, _, value = part.partition("=")
            if key == "status":
                fields["status"] = status_code(value)
            elif key == "after-success" and not value:
                fields["after_success"] = True
            elif key == "delay":
                fields["delay"] = float(value)
            elif key == "times":
                fields["times"] = None if value == "always" else int(value)
            else:
                raise ValueError(f"unknown fault setting {part!r} in {spec!r}")
        if not method.isidentifier():
            raise ValueError(f"{method!r} is not a method name such as CreateTask")
        return cls(method, **fields)


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC status named ``name`` (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...)."""
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        names = ", ".join(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
        raise ValueError(f"{name!r} is not a gRPC status; use one of {names}") from None


class Faults:
    """The emulator's pending fault plans. Thread-safe: gRPC handlers run on many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._plans.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return [Fault(**vars(plan)) for plan in self._plans]

    def take(self, method: str) -> Fault | None:
        """The plan for this call of ``method``, counted as used; None: behave."""
        with self._lock:
            for index, plan in enumerate(self._plans):
                if plan.method == method:
                    if plan.times is not None:
                        plan.times -= 1
                        if plan.times == 0:
                            del self._plans[index]
                    return plan
        return None


def wait(delay: float, context: Any) -> None:
    """Hold the answer for ``delay`` seconds, or until the client gave up on it."""
    deadline = time.monotonic() + delay
    while context.is_active():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, _NAP))
