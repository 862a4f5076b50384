"""``manage.py cloudtasks_emulator``: a local Cloud Tasks that dispatches to this project."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from google.api_core.exceptions import GoogleAPICallError

from django_tasks_cloud_tasks import client, config, sync
from django_tasks_cloud_tasks.emulator import Emulator

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
            "or 'default'. The queues and schedules the backend declares (CLOUD_TASKS_QUEUES, "
            "PRIORITY_QUEUES, SCHEDULES) are created as well.",
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

    def handle(self, *args: Any, **options: Any) -> None:
        # This process talks to this emulator: the backend's local defaults (project, location)
        # apply here as in the terminal of the server, whether or not this one exported it.
        os.environ.setdefault("CLOUD_TASKS_EMULATOR_HOST", f"{options['host']}:{options['port']}")
        project, location, queues, declared = self._placement(options)
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
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            emulator.start()
        except RuntimeError as exc:
            raise CommandError(f"Could not start the emulator: {exc}") from exc
        if declared is not None:
            try:
                queues = self._create_declared(emulator, declared, queues)
            except CommandError:
                emulator.stop()
                raise
        self.stdout.write(
            f"Cloud Tasks emulator on {emulator.address} (project {project}, location "
            f"{location}, queues: {', '.join(queues)}); OIDC issuer {emulator.issuer}.\n"
            f"Point Django at it with: export CLOUD_TASKS_EMULATOR_HOST={emulator.address}"
        )
        stop.wait()
        emulator.stop()
        self.stdout.write("Emulator stopped.")

    def _create_declared(
        self, emulator: Emulator, declared: config.CloudTasksConfig, queues: list[str]
    ) -> list[str]:
        """Create the backend's declared queues and schedules, as ``cloudtasks_sync`` would."""
        scheduler = None
        if declared.schedules:
            try:
                scheduler = sync.scheduler_client(emulator.address)
            except ImportError as exc:
                self.stderr.write(f"Schedules not created: {exc}")
        tasks = client.sync_client(emulator.address)
        try:
            plan = sync.plan([(declared, queues)], tasks_client=tasks, scheduler_client=scheduler)
            sync.apply(plan, tasks_client=tasks, scheduler_client=scheduler)
        except GoogleAPICallError as exc:
            raise CommandError(f"Could not create the declared queues: {exc}") from exc
        for schedule in declared.schedules if scheduler is not None else ():
            self.stdout.write(
                f"Schedule {schedule.name}: {schedule.task} at {schedule.cron!r} "
                f"({schedule.time_zone}), next at {schedule.next_runs()[0].isoformat()}"
            )
        return sync.declared_queue_ids(declared, queues)

    def _placement(
        self, options: dict[str, Any]
    ) -> tuple[str, str, list[str], config.CloudTasksConfig | None]:
        """The project, location and queues to create, and the backend's configuration when its
        declarations apply (the emulator serves the backend's own project and location)."""
        alias = options["backend"]
        params: dict[str, Any] | None = settings.TASKS.get(alias)
        if params is None:
            raise CommandError(f"TASKS has no backend {alias!r}; choose one with --backend.")
        queues = options["queues"] or list(params.get("QUEUES") or ["default"])
        try:
            resolved = config.resolve(alias, params.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            if options["project"] and options["location"]:
                return options["project"], options["location"], queues, None
            raise CommandError(f"{exc} Or pass --project and --location.") from exc
        project = options["project"] or resolved.project
        location = options["location"] or resolved.location
        same_place = (project, location) == (resolved.project, resolved.location)
        return project, location, queues, resolved if same_place else None

    def _log(self, line: str) -> None:
        self.stdout.write(line)
