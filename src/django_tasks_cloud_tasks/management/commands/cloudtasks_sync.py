"""``manage.py cloudtasks_sync``: make the Cloud Tasks queues and Cloud Scheduler jobs match the
settings. Without ``--apply`` it only shows the plan; ``--check`` exits 1 when anything differs."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from google.api_core.exceptions import GoogleAPIError, PermissionDenied
from google.auth.exceptions import DefaultCredentialsError

from django_tasks_cloud_tasks import client, sync

IAM_HINT = (
    "The account running this command needs roles/cloudtasks.queueAdmin to create and update "
    "queues, and roles/cloudscheduler.admin plus roles/iam.serviceAccountUser on the OIDC "
    "service account for schedules."
)


class Command(BaseCommand):
    help = (
        "Show what differs between the queues and schedules declared in TASKS and those in "
        "Cloud Tasks and Cloud Scheduler (or the emulator at CLOUD_TASKS_EMULATOR_HOST); "
        "--apply makes the changes, --check exits 1 if there are any. Never deletes or "
        "pauses a queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--apply", action="store_true", help="Make the planned changes.")
        mode.add_argument(
            "--check",
            action="store_true",
            help="Exit with status 1 if anything differs (for CI and deploy pipelines).",
        )
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            default=[],
            metavar="ALIAS",
            help="Only this TASKS alias (repeatable). Default: every Cloud Tasks backend.",
        )
        parser.add_argument(
            "--delete-schedules",
            action="store_true",
            help="Also delete Cloud Scheduler jobs that target this service's schedule "
            "endpoint but are no longer in SCHEDULES.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            backends = sync.project_backends(options["backends"])
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if not backends:
            raise CommandError("TASKS has no CloudTasksBackend to sync.")
        # Every backend of one process talks to the same place: the emulator or Google.
        emulator_host = backends[0][1].emulator_host
        needs_scheduler = options["delete_schedules"] or any(c.schedules for _, c, _ in backends)
        try:
            scheduler = sync.scheduler_client(emulator_host) if needs_scheduler else None
            tasks = client.sync_client(emulator_host)
        except ImportError as exc:
            raise CommandError(str(exc)) from exc
        except DefaultCredentialsError as exc:
            raise CommandError(
                f"No Google Cloud credentials ({exc}). Run `gcloud auth application-default "
                "login`, or set CLOUD_TASKS_EMULATOR_HOST to sync the emulator."
            ) from exc
        pairs = [(config, queues) for _, config, queues in backends]
        try:
            plan = sync.plan(
                pairs,
                tasks_client=tasks,
                scheduler_client=scheduler,
                delete_schedules=options["delete_schedules"],
            )
            self.stdout.write("\n".join(plan.lines()))
            if options["apply"] and plan:
                sync.apply(plan, tasks_client=tasks, scheduler_client=scheduler)
                self.stdout.write("Applied.")
        except PermissionDenied as exc:
            raise CommandError(f"{exc.message} {IAM_HINT}") from exc
        except GoogleAPIError as exc:
            raise CommandError(f"Cloud Tasks or Cloud Scheduler refused: {exc}") from exc
        if options["check"] and plan:
            raise CommandError("Drift: the queues or schedules differ from the settings.")
