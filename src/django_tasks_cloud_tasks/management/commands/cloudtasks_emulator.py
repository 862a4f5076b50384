"""``manage.py cloudtasks_emulator``: a local Cloud Tasks that dispatches to this project.

The flags are the standalone ``cloud-tasks-emulator``'s (``emulator/cli.py``); this command only
adds ``--backend`` and takes the project, location and queues from that backend when not given.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

from django_tasks_cloud_tasks import config
from django_tasks_cloud_tasks.emulator import cli


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
        project, location, queues = self._placement(options)
        try:
            emulator = cli.build(
                options, project=project, location=location, queues=queues, log=self._log
            )
            cli.serve(emulator, project=project, location=location, queues=queues, write=self._log)
        except cli.StartError as exc:
            raise CommandError(str(exc)) from exc

    def _placement(self, options: dict[str, Any]) -> tuple[str, str, list[str]]:
        alias = options["backend"]
        params: dict[str, Any] | None = settings.TASKS.get(alias)
        if params is None:
            raise CommandError(f"TASKS has no backend {alias!r}; choose one with --backend.")
        queues = options["queues"] or cli.env_queues() or list(params.get("QUEUES") or ["default"])
        project = options["project"] or cli.env_value("PROJECT")
        location = options["location"] or cli.env_value("LOCATION")
        if project and location:
            return project, location, queues
        try:
            resolved = config.resolve(alias, params.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            raise CommandError(f"{exc} Or pass --project and --location.") from exc
        return project or resolved.project, location or resolved.location, queues

    def _log(self, line: str) -> None:
        self.stdout.write(line)
