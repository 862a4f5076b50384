"""Bad tasks fail at enqueue with a clear error, and nothing reaches Cloud Tasks or runs."""

from __future__ import annotations

import datetime
import time
import uuid
from decimal import Decimal

import pytest
from django.tasks.exceptions import InvalidTask
from django.utils import timezone
from google.cloud import tasks_v2

from django_tasks_cloud_tasks import CloudTasksError, PayloadTooLarge
from tests import tasks
from tests.conftest import LOCATION, PROJECT, CloudTasks
from tests.tasks import recorder


def queued_tasks(cloud_tasks: CloudTasks, queue: str = "default") -> list[tasks_v2.Task]:
    parent = f"projects/{PROJECT}/locations/{LOCATION}/queues/{queue}"
    return list(cloud_tasks.client.list_tasks(parent=parent))


def assert_nothing_enqueued_or_ran(cloud_tasks: CloudTasks) -> None:
    assert queued_tasks(cloud_tasks) == []
    assert cloud_tasks.emulator.dispatches == []
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (datetime.date(2024, 1, 1), "datetime.date(2024, 1, 1)"),
        (uuid.UUID(int=7), "UUID('00000000-0000-0000-0000-000000000007')"),
        (Decimal("1.5"), "Decimal('1.5')"),
        ({1, 2}, "{1, 2}"),
    ],
)
def test_non_json_argument_raises_type_error_naming_it(
    cloud_tasks: CloudTasks, value: object, named: str
) -> None:
    with pytest.raises(TypeError, match=r"tests\.tasks\.add") as excinfo:
        tasks.add.enqueue(1, value)

    assert named in str(excinfo.value)
    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_non_json_keyword_argument_raises_type_error(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(TypeError, match="object"):
        tasks.greet.enqueue("x", greeting=object())

    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_nan_is_refused(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        tasks.add.enqueue(1, float("nan"))

    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_payload_over_the_task_size_limit_is_refused_before_calling_cloud_tasks(
    cloud_tasks: CloudTasks,
) -> None:
    with pytest.raises(PayloadTooLarge, match="Cloud Tasks accepts at most"):
        tasks.greet.enqueue("x" * (1024 * 1024))

    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_payload_just_under_the_limit_is_accepted(cloud_tasks: CloudTasks) -> None:
    tasks.greet.enqueue("x" * (1000 * 1000))

    assert recorder.wait_for(1)[0].args[0] == "x" * (1000 * 1000)


def test_run_after_more_than_30_days_ahead_is_refused(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(InvalidTask, match="more than 30 days ahead"):
        tasks.add.using(run_after=timezone.now() + datetime.timedelta(days=31)).enqueue(1, 2)

    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_queue_name_that_cloud_tasks_cannot_hold_is_refused(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(InvalidTask, match="not a valid Cloud Tasks queue id"):
        tasks.add.using(queue_name="with_underscore").enqueue(1, 2)


def test_missing_queue_raises_cloud_tasks_error_naming_it(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(CloudTasksError) as excinfo:
        tasks.add.using(queue_name="no-such-queue").enqueue(1, 2)

    message = str(excinfo.value)
    assert f"projects/{PROJECT}/locations/{LOCATION}/queues/no-such-queue" in message
    assert "cloudtasks_emulator --queue no-such-queue" in message
    assert excinfo.value.queue.endswith("/queues/no-such-queue")


async def test_missing_queue_raises_the_same_error_from_aenqueue(cloud_tasks: CloudTasks) -> None:
    with pytest.raises(CloudTasksError, match="does not exist"):
        await tasks.add.using(queue_name="no-such-queue").aenqueue(1, 2)


def test_emulator_down_raises_cloud_tasks_error_quickly(
    cloud_tasks: CloudTasks, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", f"127.0.0.1:{unused_tcp_port}")
    cloud_tasks.configure()

    started = time.monotonic()
    with pytest.raises(CloudTasksError, match="did not answer") as excinfo:
        tasks.add.enqueue(1, 2)

    assert time.monotonic() - started < 25
    assert f"127.0.0.1:{unused_tcp_port}" in str(excinfo.value)
    assert recorder.calls == []


@pytest.mark.parametrize(
    "argument",
    [
        pytest.param({1: "a"}, id="int-key"),
        pytest.param([{"ok": {None: 1}}], id="nested-none-key"),
        pytest.param({(1, 2): "a"}, id="tuple-key"),
    ],
)
def test_dict_keys_that_json_would_turn_into_strings_are_refused(
    cloud_tasks: CloudTasks, argument: object
) -> None:
    with pytest.raises(TypeError, match="is not a string"):
        tasks.add.enqueue(1, argument)

    assert_nothing_enqueued_or_ran(cloud_tasks)


def test_an_aware_run_after_is_accepted_without_time_zone_support(
    cloud_tasks: CloudTasks,
) -> None:
    cloud_tasks.settings.USE_TZ = False
    run_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.2)

    tasks.add.using(run_after=run_after).enqueue(1, 2)

    assert recorder.wait_for(1)[0].args == (1, 2)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"ENQUEUE_DEADLINE": 0.1}, "ENQUEUE_DEADLINE", id="deadline-too-short"),
        pytest.param({"ENQUEUE_DEADLINE": "10"}, "ENQUEUE_DEADLINE", id="deadline-string"),
        pytest.param({"NAMED_TASKS": "yes"}, "NAMED_TASKS", id="named-not-bool"),
        pytest.param({"ENQUEUE_ON_COMMIT": 1}, "ENQUEUE_ON_COMMIT", id="on-commit-int"),
    ],
)
def test_bad_delivery_options_are_refused_naming_the_option(
    cloud_tasks: CloudTasks, options: dict[str, object], named: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    cloud_tasks.configure(**options)

    with pytest.raises(ImproperlyConfigured, match=named):
        tasks.add.enqueue(1, 2)
