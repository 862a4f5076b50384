"""Bad queue and schedule declarations fail at start-up with a message naming the entry."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from django_tasks_cloud_tasks import config
from django_tasks_cloud_tasks.declarations import parse_schedules

BASE = {
    "CLOUD_TASKS_PROJECT": "p",
    "CLOUD_TASKS_LOCATION": "us-central1",
    "TASK_HANDLER_HOST": "https://example.com",
}


def resolve(**options: Any) -> config.CloudTasksConfig:
    return config.resolve("default", {**BASE, **options})


def schedule(**fields: Any) -> dict[str, Any]:
    return {"report": {"task": "tests.tasks.add", "cron": "0 3 * * *", **fields}}


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        pytest.param(["default"], "CLOUD_TASKS_QUEUES must map", id="not-a-dict"),
        pytest.param({"bad_id!": {}}, "key 'bad_id!' is not a valid queue id", id="bad-id"),
        pytest.param(
            {"q": {"max_atempts": 5}}, r"CLOUD_TASKS_QUEUES\['q'\] has unknown fields", id="typo"
        ),
        pytest.param(
            {"q": {"max_burst_size": 10}}, r"\['max_burst_size'\] cannot be set", id="burst"
        ),
        pytest.param(
            {"q": {"max_dispatches_per_second": 501}},
            r"CLOUD_TASKS_QUEUES\['q'\]\['max_dispatches_per_second'\] must be a number",
            id="rate-too-high",
        ),
        pytest.param(
            {"q": {"max_concurrent_dispatches": 0}}, "must be an integer from 1", id="concurrency"
        ),
        pytest.param({"q": {"max_attempts": 0}}, "or -1 for unlimited", id="zero-attempts"),
        pytest.param({"q": {"max_attempts": True}}, "positive integer", id="bool-attempts"),
        pytest.param({"q": {"min_backoff": -1}}, r"\['min_backoff'\] must be", id="negative"),
        pytest.param(
            {"q": {"min_backoff": 10, "max_backoff": 5}},
            "min_backoff must not exceed max_backoff",
            id="backoffs-crossed",
        ),
    ],
)
def test_bad_queue_declarations_name_the_queue_and_field(queues: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        resolve(CLOUD_TASKS_QUEUES=queues)
    assert "TASKS['default']" in str(raised.value)


def test_a_queue_declaration_accepts_numbers_and_timedeltas() -> None:
    resolved = resolve(
        CLOUD_TASKS_QUEUES={"q": {"min_backoff": 0.5, "max_backoff": timedelta(minutes=5)}}
    )
    (queue,) = resolved.queues
    assert queue.declared() == {
        "min_backoff": timedelta(seconds=0.5),
        "max_backoff": timedelta(minutes=5),
    }


@pytest.mark.parametrize(
    ("schedules", "message"),
    [
        pytest.param(["x"], "SCHEDULES must map", id="not-a-dict"),
        pytest.param({"has space": {}}, "'has space' is not a valid schedule name", id="name"),
        pytest.param(schedule(cron="every day"), r"\['report'\]\['cron'\] 'every day'", id="cron"),
        pytest.param(schedule(cron="61 * * * *"), "not a valid cron expression", id="minute"),
        pytest.param(schedule(time_zone="Mars/Olympus"), r"\['time_zone'\]", id="time-zone"),
        pytest.param(schedule(task="add"), r"\['task'\] must be the import path", id="task"),
        pytest.param(schedule(args=[object()]), r"\['args'\] must be JSON", id="args-not-json"),
        pytest.param(
            schedule(kwargs={"when": datetime.now(UTC)}), r"\['kwargs'\] must be JSON", id="kwargs"
        ),
        pytest.param(schedule(args=[float("nan")]), "must be JSON", id="nan"),
        pytest.param(schedule(priority=101), r"\['priority'\] must be an integer", id="priority"),
        pytest.param(schedule(queue_name="a b"), r"\['queue_name'\]", id="queue-name"),
        pytest.param(schedule(every="day"), "unknown fields 'every'", id="typo"),
    ],
)
def test_bad_schedules_name_the_entry(schedules: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        resolve(SCHEDULES=schedules)
    assert "TASKS['default']" in str(raised.value)


def test_a_schedule_knows_its_next_runs_in_its_time_zone() -> None:
    (nightly,) = parse_schedules(schedule(time_zone="America/New_York"))
    after = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
    runs = nightly.next_runs(after, count=2)
    # 03:00 in New York, on either side of the change to daylight saving time (8 March).
    assert [run.astimezone(UTC).hour for run in runs] == [8, 7]


# The system checks below take ``db``: the model checks ask the database what it supports (JSON
# fields on SQLite), which a test run alone, or first on its worker, has not asked yet.
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"task": "tests.tasks.no_such_task"}, "cannot be imported", id="missing"),
        pytest.param({"task": "tests.tasks.not_a_task"}, "is not a Task", id="not-a-task"),
        pytest.param({"queue_name": "not-allowed"}, "cannot run on this backend", id="queue"),
    ],
)
def test_the_system_check_refuses_schedules_whose_task_cannot_run(
    settings: Any, db: None, fields: dict[str, Any], message: str
) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
            "QUEUES": ["default"],
            "OPTIONS": {**BASE, "SCHEDULES": schedule(**fields)},
        }
    }
    errors = [m for m in checks.run_checks() if m.id == "django_tasks_cloud_tasks.E004"]
    assert len(errors) == 1
    assert "TASKS['default']['OPTIONS']['SCHEDULES']['report']" in errors[0].msg
    assert re.search(message, errors[0].msg)


def test_a_valid_schedule_passes_the_system_check(settings: Any, db: None) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
            "OPTIONS": {**BASE, "SCHEDULES": schedule()},
        }
    }
    ids = {m.id for m in checks.run_checks()}
    assert not {"django_tasks_cloud_tasks.E003", "django_tasks_cloud_tasks.E004"} & ids


def test_the_schedules_command_lists_next_run_times(settings: Any) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
            "OPTIONS": {**BASE, "SCHEDULES": schedule(cron="0 3 * * *", time_zone="UTC")},
        }
    }
    out = io.StringIO()
    call_command("cloudtasks_schedules", "--next", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "report (backend default): tests.tasks.add at '0 3 * * *' (UTC)"
    runs = [datetime.fromisoformat(line.split("next: ")[1]) for line in lines[1:]]
    assert len(runs) == 2
    assert all((run.hour, run.minute) == (3, 0) for run in runs)
    assert runs[1] - runs[0] == timedelta(days=1)


def test_the_schedule_path_must_end_with_a_slash() -> None:
    with pytest.raises(ImproperlyConfigured, match="SCHEDULE_HANDLER_PATH '/hooks' must end"):
        resolve(SCHEDULE_HANDLER_PATH="/hooks")


def test_the_system_check_reports_a_schedule_path_that_does_not_route(
    settings: Any, db: None
) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
            "OPTIONS": {**BASE, "SCHEDULES": schedule(), "SCHEDULE_HANDLER_PATH": "/elsewhere/"},
        }
    }
    ids = [m.id for m in checks.run_checks()]
    assert "django_tasks_cloud_tasks.E003" in ids
