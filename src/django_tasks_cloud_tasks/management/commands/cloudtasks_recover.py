"""``manage.py cloudtasks_recover``: put right what the result store shows went wrong."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks.exceptions import InvalidTaskBackend

from django_tasks_cloud_tasks import recovery


class Command(BaseCommand):
    help = (
        "Create the Cloud Tasks tasks of rows that can no longer finish, older than --older-than: "
        "committed enqueues that never reached Cloud Tasks (READY rows without a task name), "
        "READY rows whose task Cloud Tasks no longer has, and RUNNING rows whose attempt died "
        "(lease lapsed) and whose task Cloud Tasks no longer has. Safe to run on a schedule and "
        "concurrently: the tasks' names are derived from their rows, so none is created twice. "
        "Exits with status 1 if a row could not be repaired."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            metavar="ALIAS",
            help="Only this TASKS alias (repeatable). Default: every Cloud Tasks backend with "
            "STORE_RESULTS.",
        )
        parser.add_argument(
            "--older-than",
            type=float,
            default=recovery.DEFAULT_GRACE.total_seconds(),
            metavar="SECONDS",
            help="Leave rows younger than this to the enqueue still at work on them (default 60).",
        )
        parser.add_argument("--limit", type=int, help="At most this many rows per backend.")
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be repaired; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] < 0:
            raise CommandError("--older-than must be 0 or more seconds.")
        try:
            outcomes = list(
                recovery.recover(
                    aliases=options["backends"],
                    older_than=timedelta(seconds=options["older_than"]),
                    limit=options["limit"],
                    dry_run=options["dry_run"],
                )
            )
        except InvalidTaskBackend as exc:
            raise CommandError(f"{exc}; choose a TASKS alias with --backend.") from exc
        for outcome in outcomes:
            line = f"{outcome.backend} {outcome.repair} {outcome.result_id}: {outcome.detail}"
            self.stdout.write(
                line if outcome.done or options["dry_run"] else self.style.ERROR(line)
            )
        if options["dry_run"]:
            self.stdout.write(f"{len(outcomes)} would be repaired (dry run).")
            return
        failed = sum(not o.done for o in outcomes)
        self.stdout.write(f"{len(outcomes) - failed} repaired, {failed} failed.")
        if failed:
            raise CommandError(f"{failed} rows could not be repaired; see above.", returncode=1)
