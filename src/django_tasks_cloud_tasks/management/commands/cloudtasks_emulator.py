"""``manage.py cloudtasks_emulator``: a local Cloud Tasks that dispatches to this project."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from google.api_core.exceptions import GoogleAPICallError

from django_tasks_cloud_tasks import config
from django_tasks_cloud_tasks.emulator import Emulator
from django_tasks_cloud_tasks.emulator.faults import Fault

DEFAULT_PORT = 8123


class Command(BaseCommand):
    # The emulator serves any project; a half-configured one must still be able to start it.
    requires_system_checks: list[str] = []
    help = (
        "Run a local Cloud Tasks emulator speaking the Cloud Tasks v2 gRPC API. Point the "
        "backend at it with CLOUD_TASKS_EMULATOR_HOST=HOST:PORT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (8123).")
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="NAME",
            help="Create this queue at start (repeatable). Default: the backend's QUEUES, "
            "or 'default'.",
        )
        parser.add_argument(
            "--backend",
            default=DEFAULT_TASK_BACKEND_ALIAS,
            help="TASKS alias whose project and location the queues are created in.",
        )
        parser.add_argument("--project", help="Project of the queues (default: the backend's).")
        parser.add_argument("--location", help="Location of the queues (default: the backend's).")
        parser.add_argument(
            "--token-port",
            type=int,
            default=0,
            help="Port of the HTTP server publishing the OIDC signing keys (default: any free).",
        )
        parser.add_argument(
            "--issuer",
            metavar="URL",
            help="URL at which the backend reaches that server, and the tokens' issuer "
            "(default: http://HOST:TOKEN_PORT). In Docker Compose, say http://emulator:8124.",
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

    def handle(self, *args: Any, **options: Any) -> None:
        project, location, queues = self._placement(options)
        try:
            faults = [Fault.parse(spec) for spec in options["faults"]]
        except ValueError as exc:
            raise CommandError(f"--fault: {exc}") from exc
        try:
            emulator = Emulator(
                host=options["host"],
                port=options["port"],
                project=project,
                location=location,
                queues=tuple(queues),
                token_port=options["token_port"],
                log=self._log,
                issuer=options["issuer"],
            )
        except (ValueError, GoogleAPICallError) as exc:
            # A malformed --issuer, or a --queue name Cloud Tasks would refuse.
            raise CommandError(f"Could not start the emulator: {exc}") from exc
        for fault in faults:
            emulator.inject_fault(
                fault.method,
                status=fault.status,
                after_success=fault.after_success,
                delay=fault.delay,
                times=fault.times,
            )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            emulator.start()
        except RuntimeError as exc:
            raise CommandError(f"Could not start the emulator: {exc}") from exc
        self.stdout.write(
            f"Cloud Tasks emulator on {emulator.address} (project {project}, location "
            f"{location}, queues: {', '.join(queues)}); OIDC issuer {emulator.issuer}.\n"
            f"Point Django at it with: export CLOUD_TASKS_EMULATOR_HOST={emulator.address}"
        )
        for fault in faults:
            self.stdout.write(f"Injecting fault: {fault}")
        stop.wait()
        emulator.stop()
        self.stdout.write("Emulator stopped.")

    def _placement(self, options: dict[str, Any]) -> tuple[str, str, list[str]]:
        alias = options["backend"]
        params: dict[str, Any] | None = settings.TASKS.get(alias)
        if params is None:
            raise CommandError(f"TASKS has no backend {alias!r}; choose one with --backend.")
        queues = options["queues"] or list(params.get("QUEUES") or ["default"])
        if options["project"] and options["location"]:
            return options["project"], options["location"], queues
        try:
            resolved = config.resolve(alias, params.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            raise CommandError(f"{exc} Or pass --project and --location.") from exc
        return (
            options["project"] or resolved.project,
            options["location"] or resolved.location,
            queues,
        )

    def _log(self, line: str) -> None:
        self.stdout.write(line)
