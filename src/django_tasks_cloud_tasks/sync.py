"""Bringing Cloud Tasks queues and Cloud Scheduler jobs in line with the settings.

``plan`` compares what the backends declare with what exists and lists the differences field by
field; ``apply`` makes them with CreateQueue/UpdateQueue (``update_mask`` naming only the changed
fields) and CreateJob/UpdateJob/DeleteJob. Both take their clients, so the same code syncs Google
Cloud, the emulator, and the emulator started for a project.

What is not declared is left alone: an undeclared queue field keeps its value, an undeclared queue
is never touched, and nothing is ever paused. Scheduler jobs this service owns (their target is
this service's schedule endpoint) but no longer declares are deleted only when asked
(``delete_schedules``): deleting a job is easy to do and hard to notice.

Periodic tasks are Scheduler jobs that POST to the schedule endpoint (``periodic.py``), which
enqueues the task through Cloud Tasks. The job carries only the schedule's name, so arguments,
queue and priority come from the deployed settings and need no sync.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from google.api_core.exceptions import NotFound

from .config import CloudTasksConfig
from .declarations import QUEUE_FIELDS

if TYPE_CHECKING:
    from google.cloud.scheduler_v1 import CloudSchedulerClient
    from google.cloud.tasks_v2 import CloudTasksClient

Action = Literal["create", "update", "delete"]
# The Scheduler job fields a schedule sets, and how the plan shows them.
_JOB_FIELDS = (
    "description",
    "schedule",
    "time_zone",
    "http_target.uri",
    "http_target.http_method",
    "http_target.oidc_token.service_account_email",
    "http_target.oidc_token.audience",
)


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal["queue", "schedule"]
    action: Action
    name: str  # the full resource name
    # (field, current value, wanted value); current is None for a new resource.
    fields: tuple[tuple[str, Any, Any], ...] = ()
    resource: Any = None  # the Queue or Job to create or update with

    @property
    def update_mask(self) -> list[str]:
        """A queue's changed fields by their own paths; a job's by top-level field, so that a
        changed ``http_target`` is replaced whole (its token settings are a oneof)."""
        if self.kind == "queue":
            return [path for path, _, _ in self.fields]
        return sorted({path.split(".")[0] for path, _, _ in self.fields})


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        """The plan as a person reads it: ``+`` create, ``~`` change, ``-`` delete."""
        if not self.changes:
            return ["No changes: the queues and schedules match the settings."]
        symbol = {"create": "+", "update": "~", "delete": "-"}
        out = []
        for change in self.changes:
            out.append(f"{symbol[change.action]} {change.kind} {change.name}")
            for path, current, wanted in change.fields:
                if change.action == "create":
                    out.append(f"    {path}: {_show(wanted)}")
                else:
                    out.append(f"    {path}: {_show(current)} -> {_show(wanted)}")
        counts = {a: sum(c.action == a for c in self.changes) for a in symbol}
        out.append(
            f"Plan: {counts['create']} to create, {counts['update']} to change, "
            f"{counts['delete']} to delete."
        )
        return out


def project_backends(
    aliases: Sequence[str] = (),
) -> list[tuple[str, CloudTasksConfig, list[str]]]:
    """``(alias, config, QUEUES)`` of the project's Cloud Tasks backends (or of ``aliases``).

    Raises ImproperlyConfigured for a bad configuration, and ValueError for an alias that is not
    a Cloud Tasks backend.
    """
    from django.conf import settings
    from django.utils.module_loading import import_string

    from . import config as config_module
    from .backend import CloudTasksBackend

    found = []
    tasks: dict[str, dict[str, Any]] = settings.TASKS
    for alias, params in tasks.items():
        try:
            is_ours = issubclass(import_string(params["BACKEND"]), CloudTasksBackend)
        except ImportError as exc:
            raise ValueError(f"TASKS[{alias!r}]['BACKEND'] cannot be imported: {exc}") from exc
        if aliases and alias not in aliases:
            continue
        if not is_ours:
            if aliases:
                raise ValueError(f"TASKS[{alias!r}] is not a CloudTasksBackend.")
            continue
        resolved = config_module.resolve(alias, params.get("OPTIONS") or {})
        found.append((alias, resolved, list(params.get("QUEUES") or [])))
    missing = set(aliases) - {alias for alias, _, _ in found}
    if missing:
        raise ValueError(f"TASKS has no backend {', '.join(map(repr, sorted(missing)))}.")
    return found


def declared_queue_ids(config: CloudTasksConfig, queue_names: Iterable[str]) -> list[str]:
    """Every Cloud Tasks queue a backend uses: declared, priority-routed, or in its QUEUES."""
    ids = [q.queue_id for q in config.queues]
    ids += [queue_id for _, queue_id in config.priority_queues]
    ids += list(queue_names)
    return list(dict.fromkeys(ids))


def plan(
    backends: Iterable[tuple[CloudTasksConfig, Iterable[str]]],
    *,
    tasks_client: CloudTasksClient,
    scheduler_client: CloudSchedulerClient | None,
    delete_schedules: bool = False,
) -> Plan:
    """What ``apply`` would change; ``backends`` pairs each config with its QUEUES names."""
    result = Plan()
    for config, queue_names in backends:
        for queue_id in declared_queue_ids(config, queue_names):
            change = _queue_change(config, queue_id, tasks_client)
            if change is not None:
                result.changes.append(change)
        if scheduler_client is not None and (config.schedules or delete_schedules):
            result.changes += _schedule_changes(config, scheduler_client, delete_schedules)
    return result


def apply(
    changes: Plan,
    *,
    tasks_client: CloudTasksClient,
    scheduler_client: CloudSchedulerClient | None,
) -> None:
    from google.protobuf.field_mask_pb2 import FieldMask

    for change in changes.changes:
        if change.kind == "queue":
            if change.action == "create":
                parent = change.name.rpartition("/queues/")[0]
                tasks_client.create_queue(parent=parent, queue=change.resource)
            else:
                tasks_client.update_queue(
                    queue=change.resource, update_mask=FieldMask(paths=change.update_mask)
                )
            continue
        assert scheduler_client is not None  # plan() makes no schedule change without one
        if change.action == "create":
            parent = change.name.rpartition("/jobs/")[0]
            scheduler_client.create_job(parent=parent, job=change.resource)
        elif change.action == "update":
            scheduler_client.update_job(
                job=change.resource, update_mask=FieldMask(paths=change.update_mask)
            )
        else:
            scheduler_client.delete_job(name=change.name)


def _queue_change(
    config: CloudTasksConfig, queue_id: str, client: CloudTasksClient
) -> Change | None:
    from google.cloud import tasks_v2

    name = config.queue_path(queue_id)
    declaration = next((q for q in config.queues if q.queue_id == queue_id), None)
    wanted = declaration.declared() if declaration else {}
    queue = tasks_v2.Queue(name=name)
    for key, value in wanted.items():
        section, _, leaf = QUEUE_FIELDS[key][0].partition(".")
        setattr(getattr(queue, section), leaf, value)
    try:
        current = client.get_queue(name=name)
    except NotFound:
        fields = tuple((QUEUE_FIELDS[k][0], None, v) for k, v in wanted.items())
        return Change("queue", "create", name, fields, queue)
    fields = tuple(
        (path, have, value)
        for key, value in wanted.items()
        if not _same(have := _get(current, path := QUEUE_FIELDS[key][0]), value)
    )
    return Change("queue", "update", name, fields, queue) if fields else None


def _schedule_changes(
    config: CloudTasksConfig, client: CloudSchedulerClient, delete_schedules: bool
) -> list[Change]:
    from google.cloud import scheduler_v1

    parent = config.scheduler_location_path
    existing = {job.name: job for job in client.list_jobs(parent=parent)}
    changes = []
    wanted_names = set()
    for schedule in config.schedules:
        target = scheduler_v1.HttpTarget(
            uri=config.schedule_url(schedule.name), http_method=scheduler_v1.HttpMethod.POST
        )
        if config.oidc_service_account_email:
            target.oidc_token = scheduler_v1.OidcToken(
                service_account_email=config.oidc_service_account_email,
                audience=config.oidc_audience,
            )
        job = scheduler_v1.Job(
            name=f"{parent}/jobs/{schedule.name}",
            description=schedule.description,
            schedule=schedule.cron,
            time_zone=schedule.time_zone,
            http_target=target,
        )
        wanted_names.add(job.name)
        current = existing.get(job.name)
        if current is None:
            fields = tuple((p, None, v) for p in _JOB_FIELDS if (v := _get(job, p)))
            changes.append(Change("schedule", "create", job.name, fields, job))
            continue
        fields = tuple(
            (p, have, want)
            for p in _JOB_FIELDS
            if not _same(have := _get(current, p), want := _get(job, p))
        )
        if fields:
            changes.append(Change("schedule", "update", job.name, fields, job))
    if delete_schedules:
        ours = config.handler_host + config.schedule_handler_path
        for name, job in sorted(existing.items()):
            if name not in wanted_names and job.http_target.uri.startswith(ours):
                changes.append(Change("schedule", "delete", name))
    return changes


def _get(message: Any, path: str) -> Any:
    for part in path.split("."):
        message = getattr(message, part)
    return message


def _same(current: Any, wanted: Any) -> bool:
    # Proto3 shows an unset number as 0 and a Duration as a timedelta; enums compare as ints.
    if isinstance(wanted, float) or isinstance(current, float):
        return abs(float(current or 0) - float(wanted or 0)) < 1e-9
    return bool(current == wanted)


def _show(value: Any) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, str):
        return repr(value)
    return str(value)


def scheduler_client(emulator_host: str | None) -> CloudSchedulerClient:
    """A Cloud Scheduler client for Google (``None``) or the emulator at ``emulator_host``.

    Raises ImportError naming the extra to install when google-cloud-scheduler is missing.
    """
    try:
        from google.cloud.scheduler_v1 import CloudSchedulerClient
        from google.cloud.scheduler_v1.services.cloud_scheduler.transports import (
            CloudSchedulerGrpcTransport,
        )
    except ImportError as exc:
        raise ImportError(
            "Schedules need google-cloud-scheduler: pip install "
            "'django-tasks-cloud-tasks[scheduler]'."
        ) from exc
    if emulator_host is None:
        return CloudSchedulerClient()
    import grpc

    # api_endpoint would give a TLS channel, which the emulator does not speak.
    channel = grpc.insecure_channel(emulator_host)
    return CloudSchedulerClient(transport=CloudSchedulerGrpcTransport(channel=channel))
