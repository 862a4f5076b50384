"""``manage.py prune_task_results --older-than 7d``: delete finished results from the store.

Deletes in batches, so that a large backlog never holds a long lock or one huge transaction.

A RUNNING row whose attempt started longer ago than the age given, and longer ago than the longest
dispatch deadline Cloud Tasks allows (30 minutes), is abandoned: its attempt's outcome could not be
written (the database was down), and Cloud Tasks stopped waiting for it long ago. It is pruned with
the FAILED results.
Run it on a schedule (Cloud Scheduler + a Cloud Run job, or cron).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_tasks_cloud_tasks.config import MAX_DISPATCH_DEADLINE
from django_tasks_cloud_tasks.models import TaskRecord

FINISHED = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
_AGE = re.compile(r"(\d+)([dhms]?)")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "": "seconds"}


def parse_age(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``90`` (seconds)."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise CommandError(
            f"--older-than {text!r} is not an age: use a whole number of days, hours, minutes "
            "or seconds, such as 7d, 12h, 30m, 90s or 90."
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Delete finished task results (SUCCESSFUL or FAILED), and abandoned RUNNING ones, older "
        "than an age, in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            type=str,
            help="Delete results that finished longer ago than this: 7d, 12h, 30m or seconds.",
        )
        parser.add_argument(
            "--status",
            action="append",
            choices=[status.value for status in FINISHED],
            help="Delete only results with this status (repeatable; default: both). FAILED "
            "includes abandoned RUNNING results.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per statement (default 1000).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be deleted, and delete nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        now = timezone.now()
        cutoff = now - parse_age(options["older_than"])
        statuses = options["status"] or [status.value for status in FINISHED]
        condition = Q(status__in=statuses, finished_at__lt=cutoff)
        if TaskResultStatus.FAILED in statuses:
            condition |= Q(
                status=TaskResultStatus.RUNNING,
                last_attempted_at__lt=min(cutoff, now - MAX_DISPATCH_DEADLINE),
            )
        prunable = TaskRecord.objects.filter(condition)
        described = f"{' or '.join(statuses)} task results finished before {cutoff.isoformat()}"
        if TaskResultStatus.FAILED in statuses:
            described += ", and abandoned RUNNING ones"
        if options["dry_run"]:
            self.stdout.write(f"Would delete {prunable.count()} {described} (dry run).")
            return
        total = 0
        while batch := list(prunable.values_list("pk", flat=True)[: options["batch_size"]]):
            # With the conditions again: a retry may have claimed a row since it was selected.
            deleted, _ = prunable.filter(pk__in=batch).delete()
            total += deleted
            if options["verbosity"] >= 2:
                self.stdout.write(f"Deleted a batch of {deleted} (total {total}).")
        self.stdout.write(self.style.SUCCESS(f"Deleted {total} {described}."))
