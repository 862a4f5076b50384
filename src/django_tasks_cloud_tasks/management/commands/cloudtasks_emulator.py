"""``manage.py cloudtasks_emulator``: a local Cloud Tasks that dispatches to this project.

The flags are the standalone ``cloud-tasks-emulator``'s (``emulator/cli.py``); this command only
adds ``--backend`` and takes the project, location and queues from that backend when not given.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from google.api_core.exceptions import GoogleAPICallError

from django_tasks_cloud_tasks import client, config, sync
from django_tasks_cloud_tasks.emulator import Emulator, cli


class Command(BaseCommand):
    # The emulator serves any project; a half-configured one must still be able to start it.
    requires_system_checks: list[str] = []
    help = (
        "Run a local Cloud Tasks emulator speaking the Cloud Tasks v2 gRPC API. Point the "
        "backend at it with CLOUD_TASKS_EMULATOR_HOST=HOST:PORT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        cli.add_arguments(parser)
        parser.add_argument(
            "--backend",
            default=DEFAULT_TASK_BACKEND_ALIAS,
            help="TASKS alias whose project, location and QUEUES are the defaults.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # This process talks to this emulator: the backend's local defaults (project, location)
        # apply here as in the terminal of the server, whether or not this one exported it.
        os.environ.setdefault("CLOUD_TASKS_EMULATOR_HOST", f"{options['host']}:{options['port']}")
        project, location, queues, declared = self._placement(options)
        try:
            emulator = cli.build(
                options, project=project, location=location, queues=queues, log=self._log
            )
            cli.serve(
                emulator,
                project=project,
                location=location,
                queues=queues,
                write=self._log,
                started=None
                if declared is None
                else partial(self._create_declared, declared, queues),
            )
        except cli.StartError as exc:
            raise CommandError(str(exc)) from exc

    def _create_declared(
        self, declared: config.CloudTasksConfig, queues: list[str], emulator: Emulator
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
            raise cli.StartError(f"Could not create the declared queues: {exc}") from exc
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
        queues = options["queues"] or cli.env_queues() or list(params.get("QUEUES") or ["default"])
        project = options["project"] or cli.env_value("PROJECT")
        location = options["location"] or cli.env_value("LOCATION")
        try:
            resolved = config.resolve(alias, params.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            if project and location:
                return project, location, queues, None
            raise CommandError(f"{exc} Or pass --project and --location.") from exc
        project = project or resolved.project
        location = location or resolved.location
        same_place = (project, location) == (resolved.project, resolved.location)
        return project, location, queues, resolved if same_place else None

    def _log(self, line: str) -> None:
        self.stdout.write(line)
