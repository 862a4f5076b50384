"""The result store in the Django admin: a read-only record, failed tasks enqueued again, and
tasks that can no longer finish run again.

Rows are written by the backend and the execute view only. Editing one would lie about what ran
(and saving a stale form would overwrite an attempt's newer state), so there is no add or change
permission: the detail page is a view page, and the actions are re-enqueue, run again (the
repairs of ``recovery.py``, the same as ``cloudtasks_recover``) and delete.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.tasks import TaskResultStatus
from django.tasks.exceptions import TaskException
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .models import TaskRecord

_NONE = "-"
# A READY row whose task was due this long ago and has not started is worth a look.
_OVERDUE = timedelta(hours=1)


class StuckFilter(admin.SimpleListFilter):
    """Rows that may never finish by themselves: what "Run selected stuck tasks again" repairs."""

    title = "can it still finish?"
    parameter_name = "stuck"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        return [
            ("lapsed", "Running, but its attempt died (lease lapsed)"),
            ("uncreated", "Ready, but never created in Cloud Tasks"),
            ("overdue", "Ready, due over an hour ago"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[TaskRecord]
    ) -> QuerySet[TaskRecord] | None:
        now = timezone.now()
        if self.value() == "lapsed":
            return queryset.filter(status=TaskResultStatus.RUNNING, lease_expires_at__lt=now)
        if self.value() == "uncreated":
            return queryset.filter(status=TaskResultStatus.READY, cloud_task_name="")
        if self.value() == "overdue":
            return queryset.filter(
                Q(run_after=None) | Q(run_after__lt=now - _OVERDUE),
                status=TaskResultStatus.READY,
                enqueued_at__lt=now - _OVERDUE,
            )
        return None


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[TaskRecord]
else:  # Generic in django-stubs only.
    _ModelAdmin = admin.ModelAdmin


@admin.register(TaskRecord)
class TaskRecordAdmin(_ModelAdmin):
    list_display = (
        "id",
        "task_path",
        "status",
        "queue_name",
        "priority",
        "attempts",
        "enqueued_at",
        "finished_at",
    )
    list_filter = ("status", StuckFilter, "queue_name", "task_path", "backend")
    search_fields = ("^id", "task_path")
    ordering = ("-enqueued_at",)
    # Counting every row of a large table on each page view costs more than it tells.
    show_full_result_count = False
    actions = ("enqueue_again", "run_stuck_again")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "task_path",
                    "status",
                    "backend",
                    "queue_name",
                    "priority",
                    "cloud_task_name",
                )
            },
        ),
        ("Call", {"fields": ("arguments", "keyword_arguments", "result")}),
        (
            "Attempts",
            {
                "fields": (
                    "attempts",
                    "workers",
                    "enqueued_at",
                    "started_at",
                    "last_attempted_at",
                    "lease_expires_at",
                    "finished_at",
                )
            },
        ),
        ("Errors", {"fields": ("tracebacks",)}),
    )
    readonly_fields = (
        "arguments",
        "keyword_arguments",
        "result",
        "attempts",
        "workers",
        "tracebacks",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskRecord | None = None) -> bool:
        return False

    def has_enqueue_permission(self, request: HttpRequest) -> bool:
        # Enqueueing again changes what runs: it takes the model's change permission.
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    @admin.display(description="arguments")
    def arguments(self, record: TaskRecord) -> SafeString:
        return _json(record.args)

    @admin.display(description="keyword arguments")
    def keyword_arguments(self, record: TaskRecord) -> SafeString:
        return _json(record.kwargs)

    @admin.display(description="return value")
    def result(self, record: TaskRecord) -> SafeString | str:
        if record.status != TaskResultStatus.SUCCESSFUL:
            return _NONE
        return _json(record.return_value)

    @admin.display(description="attempts")
    def attempts(self, record: TaskRecord) -> int:
        return len(record.worker_ids)

    @admin.display(description="workers, one per attempt")
    def workers(self, record: TaskRecord) -> SafeString | str:
        if not record.worker_ids:
            return _NONE
        return format_html("<pre>{}</pre>", "\n".join(map(str, record.worker_ids)))

    @admin.display(description="errors, one per failed attempt")
    def tracebacks(self, record: TaskRecord) -> SafeString | str:
        if not record.errors:
            return _NONE
        return format_html_join(
            "",
            "<p><strong>{}</strong></p><pre>{}</pre>",
            ((error["exception_class_path"], error["traceback"]) for error in record.errors),
        )

    @admin.action(description="Enqueue selected failed tasks again", permissions=["enqueue"])
    def enqueue_again(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        enqueued = skipped = 0
        for record in queryset.iterator():
            if record.status != TaskResultStatus.FAILED:
                skipped += 1
                continue
            try:
                result = record.to_task_result()
                result.task.enqueue(*result.args, **result.kwargs)
            except (TaskException, ImproperlyConfigured) as exc:
                self.message_user(
                    request, f"{record.task_path} ({record.id}) not enqueued: {exc}", messages.ERROR
                )
            else:
                enqueued += 1
        if enqueued:
            self.message_user(
                request,
                f"Enqueued {enqueued} failed task(s) again, each as a new task with a new id.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} task(s) that had not failed.", messages.WARNING
            )

    @admin.action(description="Run selected stuck tasks again", permissions=["enqueue"])
    def run_stuck_again(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        from .recovery import recover_rows

        records = list(queryset)
        repaired = attempted = 0
        for outcome in recover_rows(records):
            attempted += 1
            if outcome.done:
                repaired += 1
            else:
                self.message_user(
                    request, f"{outcome.result_id} not run again: {outcome.detail}", messages.ERROR
                )
        if repaired:
            self.message_user(
                request,
                f"Created {repaired} task(s) in Cloud Tasks again, each for its own result.",
                messages.SUCCESS,
            )
        if len(records) > attempted:
            self.message_user(
                request,
                f"Left {len(records) - attempted} task(s) that can still finish by themselves.",
                messages.WARNING,
            )


def _json(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))
