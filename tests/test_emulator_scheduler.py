"""The emulator's UpdateQueue and Cloud Scheduler API, driven by the unmodified Google clients."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import google.auth.transport.requests
import pytest
from google.api_core import exceptions
from google.cloud import scheduler_v1, tasks_v2
from google.oauth2 import id_token
from google.protobuf.field_mask_pb2 import FieldMask

from django_tasks_cloud_tasks.emulator import Emulator
from django_tasks_cloud_tasks.emulator.schedules import JobAttempt, JobStore
from django_tasks_cloud_tasks.sync import scheduler_client
from tests.servers import Target, tasks_client
from tests.test_emulator import wait_until

PROJECT = "sched-project"
LOCATION = "europe-west1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
_ids = itertools.count()


@pytest.fixture(scope="module")
def em() -> Iterator[Emulator]:
    with Emulator(project=PROJECT, location=LOCATION, queues=("default",)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def tasks(em: Emulator) -> tasks_v2.CloudTasksClient:
    return tasks_client(em.address)


@pytest.fixture(scope="module")
def scheduler(em: Emulator) -> scheduler_v1.CloudSchedulerClient:
    return scheduler_client(em.address)


def new_job(scheduler: scheduler_v1.CloudSchedulerClient, url: str, **fields: Any) -> Any:
    job = {
        "name": f"{PARENT}/jobs/job-{next(_ids)}",
        "schedule": "*/5 * * * *",
        "http_target": {"uri": url},
        **fields,
    }
    return scheduler.create_job(parent=PARENT, job=job)


def attempts_of(em: Emulator, job: Any) -> list[JobAttempt]:
    job_id = job.name.rpartition("/")[2]
    return [a for a in em.schedule_attempts if a.job == job_id]


# UpdateQueue


def test_update_queue_changes_only_the_fields_in_the_mask(
    em: Emulator, tasks: tasks_v2.CloudTasksClient
) -> None:
    name = em.create_queue("update-mask", max_attempts=9, max_dispatches_per_second=20).name
    updated = tasks.update_queue(
        queue={"name": name, "retry_config": {"max_attempts": 4, "max_doublings": 2}},
        update_mask=FieldMask(paths=["retry_config.max_attempts"]),
    )
    assert updated.retry_config.max_attempts == 4
    assert updated.retry_config.max_doublings == 16  # not in the mask: unchanged
    assert updated.rate_limits.max_dispatches_per_second == 20
    assert tasks.get_queue(name=name).retry_config.max_attempts == 4


def test_update_queue_keeps_a_paused_queue_paused(
    em: Emulator, tasks: tasks_v2.CloudTasksClient
) -> None:
    name = em.create_queue("update-paused").name
    tasks.pause_queue(name=name)
    updated = tasks.update_queue(
        queue={"name": name, "rate_limits": {"max_dispatches_per_second": 5}},
        update_mask=FieldMask(paths=["rate_limits.max_dispatches_per_second"]),
    )
    assert updated.state == tasks_v2.Queue.State.PAUSED
    assert updated.rate_limits.max_dispatches_per_second == 5


def test_update_queue_creates_a_missing_queue(tasks: tasks_v2.CloudTasksClient) -> None:
    name = f"{PARENT}/queues/created-by-update"
    tasks.update_queue(queue={"name": name, "retry_config": {"max_attempts": 3}})
    assert tasks.get_queue(name=name).retry_config.max_attempts == 3


@pytest.mark.parametrize(
    ("paths", "queue"),
    [
        pytest.param(["no_such_field"], {}, id="unknown-path"),
        pytest.param(["state"], {}, id="output-only"),
        pytest.param(
            ["retry_config.max_attempts"], {"retry_config": {"max_attempts": -5}}, id="bad-value"
        ),
    ],
)
def test_update_queue_refuses_bad_updates(
    em: Emulator, tasks: tasks_v2.CloudTasksClient, paths: list[str], queue: dict[str, Any]
) -> None:
    name = em.create_queue(f"refuse-{len(paths)}-{next(_ids)}", max_attempts=7).name
    with pytest.raises(exceptions.InvalidArgument):
        tasks.update_queue(queue={"name": name, **queue}, update_mask=FieldMask(paths=paths))
    assert tasks.get_queue(name=name).retry_config.max_attempts == 7


# Cloud Scheduler


def test_a_new_job_is_enabled_and_shows_its_next_cron_time(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    job = new_job(scheduler, target.url("/next"), schedule="0 3 * * *", time_zone="Asia/Tokyo")
    assert job.state == scheduler_v1.Job.State.ENABLED
    next_run = job.schedule_time.astimezone(UTC)
    assert (next_run.hour, next_run.minute) == (18, 0)  # 03:00 in Tokyo
    assert scheduler.get_job(name=job.name).schedule_time == job.schedule_time
    assert job.name in [j.name for j in scheduler.list_jobs(parent=PARENT)]


def test_run_job_posts_with_scheduler_headers_and_a_verifiable_token(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    account = "scheduler@sched-project.iam.gserviceaccount.com"
    job = new_job(
        scheduler,
        target.url("/run"),
        http_target={
            "uri": target.url("/run"),
            "headers": {"Content-Type": "application/json"},
            "body": b'{"hello": 1}',
            "oidc_token": {"service_account_email": account, "audience": "https://aud"},
        },
    )
    scheduler.run_job(name=job.name)
    (hit,) = target.wait_for_hits(1, "/run")
    assert hit.method == "POST"
    assert hit.body == b'{"hello": 1}'
    assert hit.headers["User-Agent"] == "Google-Cloud-Scheduler"
    assert hit.headers["X-CloudScheduler"] == "true"
    assert hit.headers["X-CloudScheduler-JobName"] == job.name.rpartition("/")[2]
    token = hit.headers["Authorization"].removeprefix("Bearer ")
    request = google.auth.transport.requests.Request()
    claims = id_token.verify_token(token, request, audience="https://aud", certs_url=em.certs_url)
    assert claims["email"] == account


def test_attempts_are_recorded_on_the_job_like_cloud_scheduler(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    target.script("/fails", 503)
    job = new_job(scheduler, target.url("/fails"))
    scheduler.run_job(name=job.name)
    assert wait_until(lambda: len(attempts_of(em, job)) == 1)
    failed = scheduler.get_job(name=job.name)
    assert failed.status.code == 14  # UNAVAILABLE, as Scheduler reports a 503
    assert failed.last_attempt_time is not None
    scheduler.run_job(name=job.name)
    assert wait_until(lambda: len(attempts_of(em, job)) == 2)
    assert scheduler.get_job(name=job.name).status.code == 0
    assert [a.status for a in attempts_of(em, job)] == [503, 200]


def test_pause_and_resume_follow_the_job_states(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    job = new_job(scheduler, target.url("/pause"))
    paused = scheduler.pause_job(name=job.name)
    assert paused.state == scheduler_v1.Job.State.PAUSED
    assert "schedule_time" not in paused
    with pytest.raises(exceptions.FailedPrecondition):
        scheduler.pause_job(name=job.name)
    resumed = scheduler.resume_job(name=job.name)
    assert resumed.state == scheduler_v1.Job.State.ENABLED
    assert resumed.schedule_time is not None
    with pytest.raises(exceptions.FailedPrecondition):
        scheduler.resume_job(name=job.name)


def test_update_job_changes_the_schedule_and_delete_removes_it(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    job = new_job(scheduler, target.url("/update"))
    updated = scheduler.update_job(
        job={"name": job.name, "schedule": "30 1 * * *", "description": "nightly"},
        update_mask=FieldMask(paths=["schedule"]),
    )
    assert updated.schedule == "30 1 * * *"
    assert updated.description == ""  # not in the mask
    assert updated.http_target.uri == target.url("/update")
    scheduler.delete_job(name=job.name)
    with pytest.raises(exceptions.NotFound):
        scheduler.get_job(name=job.name)


@pytest.mark.parametrize(
    "job",
    [
        pytest.param({"schedule": "not cron"}, id="bad-cron"),
        pytest.param({"time_zone": "Mars/Olympus"}, id="bad-time-zone"),
        pytest.param({"http_target": {"uri": "ftp://x"}}, id="bad-uri"),
        pytest.param({"name": f"{PARENT}/jobs/bad id"}, id="bad-job-id"),
    ],
)
def test_create_job_refuses_bad_jobs(
    scheduler: scheduler_v1.CloudSchedulerClient, target: Target, job: dict[str, Any]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        new_job(scheduler, target.url("/bad"), **job)


def test_jobs_without_an_http_target_are_refused_naming_the_emulator(
    scheduler: scheduler_v1.CloudSchedulerClient,
) -> None:
    job = {
        "name": f"{PARENT}/jobs/pubsub",
        "schedule": "* * * * *",
        "pubsub_target": {"topic_name": "projects/p/topics/t"},
    }
    with pytest.raises(exceptions.MethodNotImplemented, match="emulator"):
        scheduler.create_job(parent=PARENT, job=job)


# Timing: the store takes the current time, so cron slots are tested without waiting for them.


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _job(schedule: str, **fields: Any) -> scheduler_v1.Job:
    return scheduler_v1.Job(
        name=f"{PARENT}/jobs/timed",
        schedule=schedule,
        http_target={"uri": "http://127.0.0.1:1/"},
        **fields,
    )


def _attempt(status: int, at: float) -> JobAttempt:
    return JobAttempt("timed", "http://127.0.0.1:1/", status, None, at, 0, {})


def test_a_job_is_due_at_each_cron_slot_and_not_before() -> None:
    store = JobStore()
    store.create(PARENT, _job("*/15 * * * *"), _at("2026-06-01T12:07:00+00:00"))
    assert store.take_due(_at("2026-06-01T12:14:59+00:00")) == []
    (run,) = store.take_due(_at("2026-06-01T12:15:00+00:00"))
    assert run.schedule_time == _at("2026-06-01T12:15:00+00:00")
    # One run outstanding: the next slot waits for it.
    assert store.take_due(_at("2026-06-01T12:31:00+00:00")) == []
    store.finish(
        run, _attempt(200, run.schedule_time), _at("2026-06-01T12:31:00+00:00"), timed_out=False
    )
    (late,) = store.take_due(_at("2026-06-01T12:31:00+00:00"))
    assert late.schedule_time == _at("2026-06-01T12:30:00+00:00")


def test_a_failed_run_is_retried_with_backoff_but_not_past_the_next_slot() -> None:
    store = JobStore()
    job = _job(
        "0 * * * *", retry_config={"retry_count": 5, "min_backoff_duration": {"seconds": 600}}
    )
    store.create(PARENT, job, _at("2026-06-01T11:59:00+00:00"))
    (run,) = store.take_due(_at("2026-06-01T12:00:00+00:00"))
    store.finish(
        run, _attempt(500, run.schedule_time), _at("2026-06-01T12:00:01+00:00"), timed_out=False
    )
    assert store.take_due(_at("2026-06-01T12:10:00+00:00")) == []
    (retry,) = store.take_due(_at("2026-06-01T12:10:01+00:00"))
    assert (retry.retry, retry.schedule_time) == (1, run.schedule_time)
    # The second retry would come 20 minutes later, 12:30; the third, at 13:10, is past the slot.
    store.finish(retry, _attempt(500, 0), _at("2026-06-01T12:10:02+00:00"), timed_out=False)
    (second,) = store.take_due(_at("2026-06-01T12:30:02+00:00"))
    store.finish(second, _attempt(500, 0), _at("2026-06-01T12:30:03+00:00"), timed_out=False)
    (next_slot,) = store.take_due(_at("2026-06-01T13:00:00+00:00"))
    assert (next_slot.retry, next_slot.schedule_time) == (0, _at("2026-06-01T13:00:00+00:00"))


def test_a_paused_job_is_never_due() -> None:
    store = JobStore()
    job = store.create(PARENT, _job("* * * * *"), _at("2026-06-01T12:00:30+00:00"))
    store.pause(job.name, _at("2026-06-01T12:00:31+00:00"))
    assert store.take_due(_at("2026-06-01T13:00:00+00:00")) == []
    store.resume(job.name, _at("2026-06-01T13:00:00+00:00"))
    assert len(store.take_due(_at("2026-06-01T13:01:00+00:00"))) == 1


def test_update_queue_without_a_mask_replaces_every_field(
    em: Emulator, tasks: tasks_v2.CloudTasksClient
) -> None:
    name = em.create_queue("update-all", max_attempts=9, max_dispatches_per_second=20).name
    updated = tasks.update_queue(queue={"name": name, "retry_config": {"max_attempts": 2}})
    assert updated.retry_config.max_attempts == 2
    assert updated.rate_limits.max_dispatches_per_second == 500  # left out: the default


def test_max_retry_duration_keeps_retrying_past_retry_count() -> None:
    store = JobStore()
    job = _job("0 * * * *", retry_config={"retry_count": 0, "max_retry_duration": {"seconds": 60}})
    store.create(PARENT, job, _at("2026-06-01T11:59:00+00:00"))
    (run,) = store.take_due(_at("2026-06-01T12:00:00+00:00"))
    store.finish(run, _attempt(500, 0), _at("2026-06-01T12:00:01+00:00"), timed_out=False)
    # Default backoff 5 s: retried while the minute lasts, though retry_count is 0.
    (retry,) = store.take_due(_at("2026-06-01T12:00:06+00:00"))
    assert retry.retry == 1
    store.finish(retry, _attempt(500, 0), _at("2026-06-01T12:01:01+00:00"), timed_out=False)
    assert store.take_due(_at("2026-06-01T12:59:59+00:00")) == []


def test_the_runner_fires_a_job_when_its_cron_slot_comes(
    em: Emulator, scheduler: scheduler_v1.CloudSchedulerClient, target: Target
) -> None:
    job = new_job(scheduler, target.url("/cron"), schedule="0 0 1 1 *")
    # The next slot is months away: bring it to now, as the clock would.
    jobs = em._jobs
    with jobs.changed:
        jobs.jobs[job.name].next_slot = time.time()
        jobs.changed.notify_all()

    (hit,) = target.wait_for_hits(1, "/cron", timeout=10)
    assert "X-CloudScheduler-ScheduleTime" in hit.headers
    assert wait_until(lambda: len(attempts_of(em, job)) == 1)
    (attempt,) = attempts_of(em, job)
    assert attempt.schedule_time is not None
    # The slot after it is the real next 1 January.
    assert scheduler.get_job(name=job.name).schedule_time.month == 1
