"""``manage.py cloudtasks_schedules``: the declared periodic tasks and when each runs next."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_tasks_cloud_tasks import sync


class Command(BaseCommand):
    help = "List the SCHEDULES of every Cloud Tasks backend with their next run times."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--next",
            type=int,
            default=1,
            metavar="N",
            help="How many upcoming run times to show per schedule (default 1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["next"] < 1:
            raise CommandError("--next must be at least 1.")
        try:
            backends = sync.project_backends()
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        schedules = [(alias, s) for alias, config, _ in backends for s in config.schedules]
        if not schedules:
            self.stdout.write("No schedules: declare them in a backend's OPTIONS['SCHEDULES'].")
            return
        for alias, schedule in schedules:
            runs = schedule.next_runs(count=options["next"])
            self.stdout.write(
                f"{schedule.name} (backend {alias}): {schedule.task} at {schedule.cron!r} "
                f"({schedule.time_zone})"
            )
            for run in runs:
                self.stdout.write(f"    next: {run.isoformat()}")
