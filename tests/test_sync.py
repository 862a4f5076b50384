"""Queues and schedules as code: ``cloudtasks_sync`` against the emulator with the real clients,
and a declared schedule firing through the emulator into a stored result."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
import requests
from django.core.management import CommandError, call_command
from django.tasks import TaskResultStatus
from google.cloud import scheduler_v1, tasks_v2
from google.protobuf.field_mask_pb2 import FieldMask

from django_tasks_cloud_tasks import config
from django_tasks_cloud_tasks.models import TaskRecord
from django_tasks_cloud_tasks.sync import scheduler_client
from tests.conftest import LOCATION, PROJECT, CloudTasks
from tests.tasks import recorder
from tests.test_emulator import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
SERVICE_ACCOUNT = "scheduler@test-project.iam.gserviceaccount.com"
_ids = itertools.count()


def unique(prefix: str) -> str:
    # The emulator lives for the whole session, so each test uses names of its own.
    return f"{prefix}-{next(_ids)}"


def sync(*args: str) -> str:
    out = io.StringIO()
    call_command("cloudtasks_sync", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def tasks(cloud_tasks: CloudTasks) -> tasks_v2.CloudTasksClient:
    return cloud_tasks.client


@pytest.fixture
def scheduler(cloud_tasks: CloudTasks) -> scheduler_v1.CloudSchedulerClient:
    return scheduler_client(cloud_tasks.emulator.address)


def test_a_new_queue_is_planned_field_by_field_and_created(
    cloud_tasks: CloudTasks, tasks: tasks_v2.CloudTasksClient
) -> None:
    queue = unique("emails")
    cloud_tasks.configure(CLOUD_TASKS_QUEUES={queue: {"max_attempts": 5, "min_backoff": 2}})

    plan = sync()

    assert plan.splitlines() == [
        f"+ queue {PARENT}/queues/{queue}",
        "    retry_config.max_attempts: 5",
        "    retry_config.min_backoff: 2s",
        "Plan: 1 to create, 0 to change, 0 to delete.",
    ]
    with pytest.raises(Exception, match="does not exist"):
        tasks.get_queue(name=f"{PARENT}/queues/{queue}")  # a plan changes nothing
    sync("--apply")
    created = tasks.get_queue(name=f"{PARENT}/queues/{queue}")
    assert created.retry_config.max_attempts == 5
    assert created.retry_config.min_backoff.total_seconds() == 2


def test_a_settings_change_plans_exactly_the_changed_fields_and_applying_twice_is_a_no_op(
    cloud_tasks: CloudTasks, tasks: tasks_v2.CloudTasksClient
) -> None:
    queue = unique("reports")
    cloud_tasks.configure(CLOUD_TASKS_QUEUES={queue: {"max_attempts": 5, "max_doublings": 3}})
    sync("--apply")
    cloud_tasks.configure(
        CLOUD_TASKS_QUEUES={
            queue: {"max_attempts": 8, "max_doublings": 3, "max_dispatches_per_second": 10}
        }
    )

    assert sync().splitlines() == [
        f"~ queue {PARENT}/queues/{queue}",
        "    rate_limits.max_dispatches_per_second: 500.0 -> 10.0",
        "    retry_config.max_attempts: 5 -> 8",
        "Plan: 0 to create, 1 to change, 0 to delete.",
    ]
    sync("--apply")
    assert sync("--check").splitlines() == [
        "No changes: the queues and schedules match the settings."
    ]
    updated = tasks.get_queue(name=f"{PARENT}/queues/{queue}")
    assert (updated.retry_config.max_attempts, updated.rate_limits.max_dispatches_per_second) == (
        8,
        10,
    )
    # Not declared, so not managed: the default stays.
    assert updated.rate_limits.max_concurrent_dispatches == 1000


def test_check_mode_fails_on_drift_made_through_the_client(
    cloud_tasks: CloudTasks, tasks: tasks_v2.CloudTasksClient
) -> None:
    queue = unique("drift")
    cloud_tasks.configure(CLOUD_TASKS_QUEUES={queue: {"max_attempts": 5}})
    sync("--apply")
    tasks.update_queue(
        queue={"name": f"{PARENT}/queues/{queue}", "retry_config": {"max_attempts": 50}},
        update_mask=FieldMask(paths=["retry_config.max_attempts"]),
    )

    out = io.StringIO()
    with pytest.raises(CommandError, match="Drift"):
        call_command("cloudtasks_sync", "--check", stdout=out)
    assert "    retry_config.max_attempts: 50 -> 5" in out.getvalue()


def test_sync_never_resumes_or_deletes_queues(
    cloud_tasks: CloudTasks, tasks: tasks_v2.CloudTasksClient
) -> None:
    paused, undeclared = unique("paused"), unique("undeclared")
    for queue in (paused, undeclared):
        cloud_tasks.emulator.create_queue(queue, project=PROJECT, location=LOCATION)
    tasks.pause_queue(name=f"{PARENT}/queues/{paused}")
    cloud_tasks.configure(CLOUD_TASKS_QUEUES={paused: {"max_attempts": 4}})

    sync("--apply", "--delete-schedules")

    assert tasks.get_queue(name=f"{PARENT}/queues/{paused}").state == tasks_v2.Queue.State.PAUSED
    assert tasks.get_queue(name=f"{PARENT}/queues/{undeclared}")


def schedule_settings(name: str, **fields: Any) -> dict[str, Any]:
    return {name: {"task": "tests.tasks.add", "cron": "0 0 1 1 *", "args": [2, 3], **fields}}


def test_schedules_become_scheduler_jobs_and_drift_is_caught(
    cloud_tasks: CloudTasks, scheduler: scheduler_v1.CloudSchedulerClient
) -> None:
    name = unique("nightly")
    cloud_tasks.configure(
        SCHEDULES=schedule_settings(name, cron="0 3 * * *", time_zone="Europe/Paris"),
        OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT,
    )
    job_name = f"{PARENT}/jobs/{name}"

    plan = sync().splitlines()
    assert plan[0] == f"+ schedule {job_name}"
    assert "    schedule: '0 3 * * *'" in plan
    sync("--apply")
    assert sync("--check").startswith("No changes")
    job = scheduler.get_job(name=job_name)
    assert job.http_target.uri == f"{cloud_tasks.handler_host}/cloudtasks/schedule/{name}/"
    assert job.http_target.oidc_token.service_account_email == SERVICE_ACCOUNT
    assert job.time_zone == "Europe/Paris"

    scheduler.update_job(
        job={"name": job_name, "schedule": "0 4 * * *"}, update_mask=FieldMask(paths=["schedule"])
    )
    out = io.StringIO()
    with pytest.raises(CommandError, match="Drift"):
        call_command("cloudtasks_sync", "--check", stdout=out)
    assert "    schedule: '0 4 * * *' -> '0 3 * * *'" in out.getvalue()
    sync("--apply")
    assert scheduler.get_job(name=job_name).schedule == "0 3 * * *"


def test_undeclared_jobs_of_this_service_are_deleted_only_when_asked(
    cloud_tasks: CloudTasks, scheduler: scheduler_v1.CloudSchedulerClient
) -> None:
    old, foreign = unique("retired"), unique("foreign")
    cloud_tasks.configure(SCHEDULES=schedule_settings(old))
    sync("--apply")
    scheduler.create_job(
        parent=PARENT,
        job={
            "name": f"{PARENT}/jobs/{foreign}",
            "schedule": "* * * * *",
            "http_target": {"uri": "https://elsewhere.example/hook"},
        },
    )
    cloud_tasks.configure(SCHEDULES={})

    assert "delete" not in sync("--apply")
    assert scheduler.get_job(name=f"{PARENT}/jobs/{old}")
    plan = sync("--apply", "--delete-schedules")

    assert f"- schedule {PARENT}/jobs/{old}" in plan
    assert foreign not in plan
    names = [job.name.rpartition("/")[2] for job in scheduler.list_jobs(parent=PARENT)]
    assert old not in names
    assert foreign in names


def test_a_declared_schedule_fires_through_the_emulator_and_its_result_is_stored(
    cloud_tasks: CloudTasks, scheduler: scheduler_v1.CloudSchedulerClient
) -> None:
    name = unique("adds")
    cloud_tasks.configure(
        SCHEDULES=schedule_settings(name, args=[20, 22]),
        STORE_RESULTS=True,
        OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT,
        ALLOW_UNAUTHENTICATED=False,
    )
    sync("--apply")

    scheduler.run_job(name=f"{PARENT}/jobs/{name}")

    # Arguments of its own: a late delivery left over from another test cannot pass for this one.
    stored = TaskRecord.objects.filter(task_path="tests.tasks.add", args=[20, 22])
    assert wait_until(lambda: stored.filter(status=TaskResultStatus.SUCCESSFUL).exists(), 30)
    (record,) = stored
    assert (record.return_value, record.queue_name) == (42, "default")
    assert ("add", (20, 22)) in [(call.name, call.args) for call in recorder.calls]

    # The run is recorded once the endpoint's answer is in, which may come after the task ran.
    def attempts() -> list[int]:
        return [a.status for a in cloud_tasks.emulator.schedule_attempts if a.job == name]

    assert wait_until(lambda: attempts() == [200], 10)
    assert scheduler.get_job(name=f"{PARENT}/jobs/{name}").status.code == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param({"Authorization": "Bearer not-a-token"}, 401, id="bad-token"),
    ],
)
def test_the_schedule_endpoint_refuses_unauthenticated_callers(
    cloud_tasks: CloudTasks, headers: dict[str, str], status: int
) -> None:
    name = unique("guarded")
    cloud_tasks.configure(
        SCHEDULES=schedule_settings(name),
        OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT,
        ALLOW_UNAUTHENTICATED=False,
    )
    url = f"{cloud_tasks.handler_host}/cloudtasks/schedule/{name}/"

    response = requests.post(url, headers=headers, timeout=10)

    assert response.status_code == status
    assert cloud_tasks.emulator.wait_until_idle(5)
    assert recorder.calls == []


def test_the_schedule_endpoint_is_closed_without_authentication_settings(
    cloud_tasks: CloudTasks,
) -> None:
    name = unique("closed")
    cloud_tasks.configure(SCHEDULES=schedule_settings(name), ALLOW_UNAUTHENTICATED=False)

    response = requests.post(f"{cloud_tasks.handler_host}/cloudtasks/schedule/{name}/", timeout=10)

    assert response.status_code == 403
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("post", "no-such-schedule", 404, id="unknown-schedule"),
        pytest.param("get", "known", 405, id="not-a-post"),
    ],
)
def test_the_schedule_endpoint_answers_bad_requests_with_4xx(
    cloud_tasks: CloudTasks, method: str, path: str, status: int
) -> None:
    cloud_tasks.configure(SCHEDULES=schedule_settings("known"))

    response = requests.request(
        method, f"{cloud_tasks.handler_host}/cloudtasks/schedule/{path}/", timeout=10
    )

    assert response.status_code == status
    assert recorder.calls == []


def test_the_schedule_endpoint_enqueues_with_the_declared_queue_and_priority(
    cloud_tasks: CloudTasks,
) -> None:
    name = unique("routed")
    cloud_tasks.configure(
        SCHEDULES={
            name: {
                "task": "tests.tasks.urgent",
                "cron": "* * * * *",
                "queue_name": "high-priority",
                "priority": 7,
            }
        }
    )

    response = requests.post(f"{cloud_tasks.handler_host}/cloudtasks/schedule/{name}/", timeout=10)

    assert response.status_code == 200
    assert response.json()["status"] == "enqueued"
    (call,) = recorder.wait_for(1)
    assert (call.queue_name, call.priority) == ("high-priority", 7)


def slot(time: str) -> dict[str, str]:
    """The headers Cloud Scheduler sends with a cron run."""
    return {"X-CloudScheduler": "true", "X-CloudScheduler-ScheduleTime": time}


@pytest.mark.parametrize("store_results", [True, False], ids=["store", "no-store"])
def test_a_repeated_delivery_of_a_cron_slot_enqueues_its_task_once(
    cloud_tasks: CloudTasks, store_results: bool
) -> None:
    name = unique("slot")
    cloud_tasks.configure(
        SCHEDULES=schedule_settings(name, task="tests.tasks.describe", args=["a slot"]),
        STORE_RESULTS=store_results,
    )
    url = f"{cloud_tasks.handler_host}/cloudtasks/schedule/{name}/"

    first = requests.post(url, headers=slot("2026-12-07T08:00:00Z"), timeout=10)
    recorder.wait_for(1)  # The slot's task has run, and left its name reserved.
    again = requests.post(url, headers=slot("2026-12-07T08:00:00Z"), timeout=10)
    following = requests.post(url, headers=slot("2026-12-07T09:00:00Z"), timeout=10)
    by_hand = requests.post(url, timeout=10)  # RunJob, or a person: a run of its own.

    answers = [r.json() for r in (first, again, following, by_hand)]
    assert [r.status_code for r in (first, again, following, by_hand)] == [200] * 4
    ids = [answer["task_id"] for answer in answers]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert [answer["status"] for answer in answers] == [
        "enqueued",
        "duplicate" if store_results else "enqueued",
        "enqueued",
        "enqueued",
    ]
    recorder.wait_for(3)
    assert cloud_tasks.emulator.wait_until_idle(10)
    assert sorted(call.task_id for call in recorder.calls) == sorted(set(ids))


def test_max_attempts_of_a_declared_queue_is_known_to_the_execute_side(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.configure(CLOUD_TASKS_QUEUES={"default": {"max_attempts": 4}, "other": {}})
    resolved = config.resolve("default", cloud_tasks.settings.TASKS["default"]["OPTIONS"])

    assert resolved.max_attempts_for("default") == 4
    assert resolved.max_attempts_for("other") is None  # not declared: Cloud Tasks' own
    assert resolved.max_attempts_for("unknown") is None
