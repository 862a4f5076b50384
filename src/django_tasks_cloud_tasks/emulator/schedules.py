"""Cloud Scheduler's jobs in the emulator: when each runs next, and what its attempts did.

Cron expressions are evaluated by ``cronsim`` in the job's time zone, which follows Debian cron
(as Cloud Scheduler's unix-cron does) through daylight-saving changes. The rules copied from
Cloud Scheduler (``scheduler_v1`` docstrings): a job never has two scheduled runs outstanding (a
slot that comes due while one runs waits for it), ``RunJob`` starts a run at once even if one is
under way, a failed run is retried until both ``retry_count`` and ``max_retry_duration`` are used
up, with the configured backoff, but never past the next slot, and a job's ``status``,
``last_attempt_time`` and ``schedule_time`` tell how its last run went and when the next one is.

Every method takes the current time, so the timing rules are testable without waiting a minute.
"""

from __future__ import annotations

import secrets
import threading
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError
from google.api_core.exceptions import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MethodNotImplemented,
    NotFound,
    from_http_status,
)
from google.cloud import scheduler_v1
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import status_pb2

from ..limits import JOB_ID
from .clock import timestamp
from .retry import gives_up, retry_delay

Job = scheduler_v1.Job
State = scheduler_v1.Job.State
_OUTPUT_ONLY = frozenset(
    {"name", "state", "status", "schedule_time", "last_attempt_time", "user_update_time"}
)
# RetryConfig's documented defaults.
DEFAULT_MIN_BACKOFF = 5.0
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_MAX_DOUBLINGS = 5
_UNKNOWN = 2  # google.rpc.Code.UNKNOWN: no HTTP answer, or one with no gRPC equivalent
_DEADLINE_EXCEEDED = 4


@dataclass(frozen=True, slots=True)
class JobAttempt:
    """One HTTP request a job made, as the emulator's ``schedule_attempts`` lists it."""

    job: str  # the job id
    url: str
    status: int  # HTTP status; 0 if there was no answer
    schedule_time: float | None  # the cron slot it ran for; None for RunJob
    started_at: float
    retry: int  # 0 for a slot's first attempt
    headers: dict[str, str]


@dataclass(eq=False, slots=True)
class JobEntry:
    job: scheduler_v1.Job  # a snapshot handed to responses: replaced on change, never mutated
    next_slot: float | None = None  # the next cron time, epoch seconds
    slot: float | None = None  # the slot being run or retried
    retries: int = 0
    slot_began: float = 0.0  # when the slot's first attempt started
    retry_at: float | None = None
    running: bool = False

    @property
    def job_id(self) -> str:
        return str(self.job.name).rpartition("/")[2]

    def due_at(self) -> float | None:
        if self.job.state != State.ENABLED or self.running:
            return None
        return self.retry_at if self.retry_at is not None else self.next_slot


@dataclass(frozen=True, slots=True)
class Run:
    """A request to send now; the store learns its outcome through ``JobStore.finish``."""

    entry: JobEntry
    job: scheduler_v1.Job
    schedule_time: float | None
    retry: int
    forced: bool


@dataclass(slots=True)
class JobStore:
    jobs: dict[str, JobEntry] = field(default_factory=dict)
    attempts: list[JobAttempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The runner waits here for the next due time, or for a change of any job.
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def create(self, parent: str, job: scheduler_v1.Job, now: float) -> scheduler_v1.Job:
        job = Job(job)
        if not job.name:
            job.name = f"{parent}/jobs/{secrets.token_hex(8)}"
        if job.name.rpartition("/jobs/")[0] != parent:
            raise InvalidArgument(f"The job name ({job.name!r}) must be under {parent!r}.")
        _check_job_id(job.name)
        _check(job)
        for name in _OUTPUT_ONLY - {"name"}:
            Job.pb(job).ClearField(name)
        with self.lock:
            if job.name in self.jobs:
                raise AlreadyExists(f"Job {job.name} already exists.")
            entry = JobEntry(job)
            self._set(entry, job, now, state=State.ENABLED)
            self.jobs[job.name] = entry
            self.changed.notify_all()
            return entry.job

    def get(self, name: str) -> scheduler_v1.Job:
        with self.lock:
            return self._entry(name).job

    def list_jobs(self, parent: str) -> list[scheduler_v1.Job]:
        with self.lock:
            prefix = f"{parent}/jobs/"
            return [self.jobs[n].job for n in sorted(self.jobs) if n.startswith(prefix)]

    def update(self, job: scheduler_v1.Job, mask: FieldMask, now: float) -> scheduler_v1.Job:
        paths = [p for p in mask.paths if p.split(".")[0] not in _OUTPUT_ONLY]
        descriptor = Job.pb().DESCRIPTOR
        if not FieldMask(paths=paths).IsValidForDescriptor(descriptor):
            raise InvalidArgument(f"Invalid update_mask paths: {', '.join(mask.paths)}.")
        with self.lock:
            entry = self._entry(job.name)
            updated = Job(entry.job)
            if paths:
                FieldMask(paths=paths).MergeMessage(
                    Job.pb(job), Job.pb(updated), replace_message_field=True
                )
            else:
                for name in Job.meta.fields:
                    if name not in _OUTPUT_ONLY and name in job:
                        setattr(updated, name, getattr(job, name))
            _check(updated)
            self._set(entry, updated, now, state=entry.job.state)
            self.changed.notify_all()
            return entry.job

    def delete(self, name: str) -> None:
        with self.lock:
            self._entry(name)
            del self.jobs[name]

    def pause(self, name: str, now: float) -> scheduler_v1.Job:
        with self.lock:
            entry = self._entry(name)
            if entry.job.state != State.ENABLED:
                raise FailedPrecondition(f"Job {name} is not enabled, so it cannot be paused.")
            entry.retry_at = None
            self._set(entry, entry.job, now, state=State.PAUSED)
            return entry.job

    def resume(self, name: str, now: float) -> scheduler_v1.Job:
        with self.lock:
            entry = self._entry(name)
            if entry.job.state != State.PAUSED:
                raise FailedPrecondition(f"Job {name} is not paused, so it cannot be resumed.")
            self._set(entry, entry.job, now, state=State.ENABLED)
            self.changed.notify_all()
            return entry.job

    def run_now(self, name: str) -> tuple[scheduler_v1.Job, Run]:
        """RunJob: a run that starts at once, even while a scheduled one is under way."""
        with self.lock:
            entry = self._entry(name)
            return entry.job, Run(entry, entry.job, None, 0, forced=True)

    def take_due(self, now: float) -> list[Run]:
        """Start the runs that are due at ``now``; the caller sends them."""
        runs = []
        with self.lock:
            for entry in self.jobs.values():
                due = entry.due_at()
                if due is None or due > now:
                    continue
                if entry.retry_at is None:  # a new slot, not a retry of the last one
                    entry.slot, entry.retries, entry.slot_began = entry.next_slot, 0, now
                    entry.next_slot = _next_slot(entry.job, now)
                entry.retry_at = None
                entry.running = True
                runs.append(Run(entry, entry.job, entry.slot, entry.retries, forced=False))
        return runs

    def next_due_locked(self) -> float | None:
        """When the next run is due; the caller holds ``lock``."""
        times = [t for e in self.jobs.values() if (t := e.due_at()) is not None]
        return min(times, default=None)

    def finish(self, run: Run, attempt: JobAttempt, now: float, *, timed_out: bool) -> None:
        """Record an attempt's outcome on its job and decide on a retry."""
        entry = run.entry
        ok = 200 <= attempt.status < 300
        code = 0 if ok else _DEADLINE_EXCEEDED if timed_out else _rpc_code(attempt.status)
        with self.lock:
            self.attempts.append(attempt)
            if self.jobs.get(str(entry.job.name)) is not entry:
                return  # deleted meanwhile
            job = Job(entry.job, last_attempt_time=timestamp(attempt.started_at))
            # CopyFrom, not a keyword argument: that would merge, and code 0 would not stick.
            Job.pb(job).status.CopyFrom(status_pb2.Status(code=code))
            entry.job = job
            if run.forced:
                self.changed.notify_all()
                return
            entry.running = False
            retry = entry.job.retry_config
            # Retried until both retry_count and max_retry_duration are used up.
            if not ok and not gives_up(
                entry.retries + 1,
                now - entry.slot_began,
                max_attempts=retry.retry_count + 1,
                max_retry_duration=_seconds(retry.max_retry_duration),
            ):
                entry.retries += 1
                delay = retry_delay(
                    entry.retries,
                    min_backoff=_seconds(retry.min_backoff_duration) or DEFAULT_MIN_BACKOFF,
                    max_backoff=_seconds(retry.max_backoff_duration) or DEFAULT_MAX_BACKOFF,
                    max_doublings=retry.max_doublings or DEFAULT_MAX_DOUBLINGS,
                )
                # Retries stop at the next slot, which starts afresh.
                if entry.next_slot is None or now + delay < entry.next_slot:
                    entry.retry_at = now + delay
            self._show_next(entry)
            self.changed.notify_all()

    def records(self) -> list[JobAttempt]:
        with self.lock:
            return list(self.attempts)

    # The caller holds the lock.

    def _entry(self, name: str) -> JobEntry:
        entry = self.jobs.get(name)
        if entry is None:
            raise NotFound(f"Job not found: {name}.")
        return entry

    def _set(self, entry: JobEntry, job: scheduler_v1.Job, now: float, *, state: int) -> None:
        job = Job(job, state=state, user_update_time=timestamp(now))
        entry.job = job
        entry.next_slot = _next_slot(job, now)
        self._show_next(entry)

    def _show_next(self, entry: JobEntry) -> None:
        upcoming = entry.retry_at if entry.retry_at is not None else entry.next_slot
        job = Job(entry.job)
        if upcoming is None or job.state != State.ENABLED:
            Job.pb(job).ClearField("schedule_time")
        else:
            job.schedule_time = timestamp(upcoming)
        entry.job = job


def _check_job_id(name: str) -> None:
    job_id = name.rpartition("/jobs/")[2]
    if not JOB_ID.fullmatch(job_id):
        raise InvalidArgument(
            f"Job id {job_id!r} can contain only letters, numbers, hyphens and underscores, "
            "up to 500 characters."
        )


def _check(job: scheduler_v1.Job) -> None:
    target = Job.pb(job).WhichOneof("target")
    if target != "http_target":
        raise MethodNotImplemented(
            "The Cloud Tasks emulator runs only Cloud Scheduler jobs with an http_target."
        )
    if not job.http_target.uri.startswith(("http://", "https://")):
        raise InvalidArgument("http_target.uri must start with http:// or https://.")
    if not job.schedule:
        raise InvalidArgument("A job needs a schedule (a unix-cron expression).")
    try:
        zone = zoneinfo.ZoneInfo(job.time_zone or "UTC")
        CronSim(job.schedule, datetime.now(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"Invalid time_zone {job.time_zone!r}: {exc}") from None
    except CronSimError as exc:
        raise InvalidArgument(f"Invalid schedule {job.schedule!r}: {exc}") from None


def _next_slot(job: scheduler_v1.Job, now: float) -> float | None:
    if job.state != State.ENABLED:
        return None
    zone = zoneinfo.ZoneInfo(job.time_zone or "UTC")
    start = datetime.fromtimestamp(now, UTC).astimezone(zone)
    return next(CronSim(job.schedule, start)).timestamp()


def _rpc_code(http_status: int) -> int:
    code = from_http_status(http_status, "").grpc_status_code if http_status else None
    return int(code.value[0]) if code is not None else _UNKNOWN


def _seconds(duration: object) -> float:
    total = getattr(duration, "total_seconds", None)
    return float(total()) if total is not None else 0.0
