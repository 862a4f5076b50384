"""The emulator's command line, shared by ``cloud-tasks-emulator`` (standalone, no Django) and
``manage.py cloudtasks_emulator`` (which takes its defaults from a Django project).

Every flag can also come from an environment variable, which is what a container recipe or a
compose file sets. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.api_core.exceptions import GoogleAPICallError

from .faults import Fault
from .server import DEFAULT_QUEUE_REUSE_SECONDS, DEFAULT_TOMBSTONE_SECONDS, Emulator

DEFAULT_PORT = 8123
DEFAULT_PROJECT = "demo-project"
DEFAULT_LOCATION = "us-central1"
ENV_PREFIX = "CLOUD_TASKS_EMULATOR_"


class StartError(Exception):
    """The emulator could not start; the message says why."""


def env_value(name: str, *fallbacks: str) -> str | None:
    for key in (ENV_PREFIX + name, *fallbacks):
        if value := os.environ.get(key):
            return value
    return None


def _number[N: (int, float)](
    kind: type[N], env: str, *, maximum: float | None = None
) -> Callable[[str], N]:
    """An argparse type for a flag that its environment variable may also set: argparse converts
    string defaults with it too, so a bad value from either is reported as a usage error that
    names both, not raised as a traceback while the parser is built."""

    def parse(text: str) -> N:
        what = "a whole number" if kind is int else "a number of seconds"
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (
            value is None
            or not math.isfinite(value)
            or value < 0
            or (maximum is not None and value > maximum)
        ):
            limit = f" from 0 to {maximum:g}" if maximum is not None else " of 0 or more"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {what}{limit} (set by the flag or {ENV_PREFIX}{env})"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both entry points share. Project, location and queues default to None here:
    each entry point has its own defaults for them."""
    parser.add_argument(
        "--host",
        default=env_value("BIND") or "127.0.0.1",
        help="Interface to listen on (env CLOUD_TASKS_EMULATOR_BIND; default 127.0.0.1; "
        "0.0.0.0 in a container).",
    )
    parser.add_argument(
        "--port",
        type=_number(int, "PORT", maximum=65535),
        default=env_value("PORT") or str(DEFAULT_PORT),
        help=f"gRPC port (env CLOUD_TASKS_EMULATOR_PORT; default {DEFAULT_PORT}).",
    )
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help="Create this queue at start (repeatable; env CLOUD_TASKS_EMULATOR_QUEUES, "
        "comma-separated).",
    )
    parser.add_argument(
        "--project", help="Project of the queues (env CLOUD_TASKS_EMULATOR_PROJECT)."
    )
    parser.add_argument(
        "--location", help="Location of the queues (env CLOUD_TASKS_EMULATOR_LOCATION)."
    )
    parser.add_argument(
        "--token-port",
        type=_number(int, "TOKEN_PORT", maximum=65535),
        default=env_value("TOKEN_PORT") or "0",
        help="Port of the HTTP server publishing the OIDC signing keys and the web page "
        "(env CLOUD_TASKS_EMULATOR_TOKEN_PORT; default: any free port).",
    )
    parser.add_argument(
        "--issuer",
        metavar="URL",
        default=env_value("ISSUER"),
        help="URL at which others reach that server, and the tokens' issuer "
        "(env CLOUD_TASKS_EMULATOR_ISSUER; default http://HOST:TOKEN_PORT). In Docker "
        "Compose, say http://emulator:8124.",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        default=env_value("STATE_FILE"),
        help="SQLite file keeping queues, tasks, reserved names and attempts across restarts "
        "(env CLOUD_TASKS_EMULATOR_STATE_FILE; default: in memory only).",
    )
    parser.add_argument(
        "--queue-reuse-wait",
        type=_number(float, "QUEUE_REUSE_WAIT"),
        metavar="SECONDS",
        default=env_value("QUEUE_REUSE_WAIT") or str(DEFAULT_QUEUE_REUSE_SECONDS),
        help="How long a deleted queue's name cannot be used again "
        "(env CLOUD_TASKS_EMULATOR_QUEUE_REUSE_WAIT; default 604800, Cloud Tasks' 7 days).",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=env_value("QUIET") not in (None, "0", "false"),
        help="Do not log each attempt (env CLOUD_TASKS_EMULATOR_QUIET=1).",
    )
    parser.add_argument(
        "--task-name-reuse-wait",
        type=_number(float, "TASK_NAME_REUSE_WAIT"),
        metavar="SECONDS",
        default=env_value("TASK_NAME_REUSE_WAIT") or str(DEFAULT_TOMBSTONE_SECONDS),
        help="How long a finished or deleted task's name cannot be used again "
        "(env CLOUD_TASKS_EMULATOR_TASK_NAME_REUSE_WAIT; default 86400).",
    )
    parser.add_argument(
        "--fault",
        action="append",
        dest="faults",
        default=[],
        metavar="SPEC",
        help="Make calls misbehave, for testing retries (repeatable): "
        "METHOD[,status=CODE][,after-success][,delay=SECONDS][,times=N|always], e.g. "
        "'CreateTask,status=UNAVAILABLE,times=2'. See docs/delivery-guarantees.md.",
    )


def env_queues() -> list[str] | None:
    value = env_value("QUEUES")
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def build(
    options: dict[str, Any],
    *,
    project: str,
    location: str,
    queues: Sequence[str],
    log: Callable[[str], None],
) -> Emulator:
    """An emulator configured by the shared flags; StartError if they are wrong."""
    try:
        faults = [Fault.parse(spec) for spec in options["faults"]]
    except ValueError as exc:
        raise StartError(f"--fault: {exc}") from exc
    try:
        emulator = Emulator(
            host=options["host"],
            port=options["port"],
            project=project,
            location=location,
            queues=tuple(queues),
            token_port=options["token_port"],
            log=None if options["quiet"] else log,
            issuer=options["issuer"],
            state_file=options["state_file"],
            queue_reuse_seconds=options["queue_reuse_wait"],
            tombstone_seconds=options["task_name_reuse_wait"],
        )
    except (ValueError, GoogleAPICallError, sqlite3.Error) as exc:
        # A malformed --issuer, a --queue name Cloud Tasks would refuse, an unusable state file.
        raise StartError(f"Could not start the emulator: {exc}") from exc
    for fault in faults:
        emulator.inject_fault(
            fault.method,
            status=fault.status,
            after_success=fault.after_success,
            delay=fault.delay,
            times=fault.times,
        )
    return emulator


class _StopRequest:
    """Set by SIGINT or SIGTERM; waited for by the main thread.

    The kernel may deliver the signal to any of the emulator's threads; Python then runs the handler
    only when the main thread next wakes, and a main thread blocked on a lock (``Event.wait()``)
    never does. So the main thread sleeps in short steps, and the handler takes no lock: it runs in
    the middle of whatever the main thread was doing.
    """

    _POLL_SECONDS = 0.2

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum: int, frame: object) -> None:
        self.requested = True

    def wait(self) -> None:
        while not self.requested:
            time.sleep(self._POLL_SECONDS)


def serve(
    emulator: Emulator,
    *,
    project: str,
    location: str,
    queues: Sequence[str],
    write: Callable[[str], None],
    started: Callable[[Emulator], Sequence[str]] | None = None,
) -> None:
    """Run ``emulator`` until SIGINT or SIGTERM.

    ``started`` runs once the emulator serves (say, to create declared queues through its API)
    and returns the queues to announce; a StartError from it stops the emulator.
    """
    stop = _StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.request)
    try:
        emulator.start()
    except RuntimeError as exc:
        raise StartError(f"Could not start the emulator: {exc}") from exc
    if started is not None:
        try:
            queues = started(emulator)
        except StartError:
            emulator.stop()
            raise
    write(
        f"Cloud Tasks emulator on {emulator.address} (project {project}, location "
        f"{location}, queues: {', '.join(queues)}); OIDC issuer {emulator.issuer}.\n"
        f"Web page: {emulator.console_url}\n"
        f"Point clients at it with: export CLOUD_TASKS_EMULATOR_HOST={emulator.address}"
    )
    for fault in emulator.pending_faults:
        write(f"Injecting fault: {fault}")
    stop.wait()
    emulator.stop()
    write("Emulator stopped.")


def main(argv: Sequence[str] | None = None) -> int:
    """``cloud-tasks-emulator``: the emulator without a Django project."""
    parser = argparse.ArgumentParser(
        prog="cloud-tasks-emulator",
        description="A local Cloud Tasks emulator speaking the Cloud Tasks v2 gRPC API. Point "
        "clients at it with CLOUD_TASKS_EMULATOR_HOST=HOST:PORT and an insecure channel.",
    )
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    project = options["project"] or env_value("PROJECT", "GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT
    location = (
        options["location"] or env_value("LOCATION", "CLOUD_TASKS_LOCATION") or DEFAULT_LOCATION
    )
    queues = options["queues"] or env_queues() or ["default"]

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        emulator = build(options, project=project, location=location, queues=queues, log=write)
        serve(emulator, project=project, location=location, queues=queues, write=write)
    except StartError as exc:
        print(f"cloud-tasks-emulator: {exc}", file=sys.stderr)
        return 1
    return 0
