"""The testing helpers users install: the harness behind the pytest plugin and CloudTasksTestCase.

The whole suite runs on this harness: its ``cloud_tasks`` fixture (conftest) is a
``CloudTasksHarness`` with the suite's settings, and shadows the plugin's. Here the harness is built
as the plugin builds it, whatever ``TASKS`` says; the plugin's fixtures themselves run in a new
project, in ``test_quick_start``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_tasks_cloud_tasks.emulator import Emulator
from django_tasks_cloud_tasks.testing import CloudTasksHarness, CloudTasksTestCase
from tests.tasks import add, always_fails, greet, on_high_priority_queue, recorder


@pytest.fixture
def harness(
    cloud_tasks_emulator: Emulator, live_server: Any, settings: Any
) -> Iterator[CloudTasksHarness]:
    # Whatever TASKS said: here, a backend that cannot even reach its handler.
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
    recorder.clear()
    started = CloudTasksHarness(cloud_tasks_emulator, live_server.url)
    started.start()
    yield started
    started.stop()


def test_a_task_runs_through_the_emulator_and_the_live_server(harness: CloudTasksHarness) -> None:
    result = add.enqueue(2, 3)

    attempts = harness.wait()

    assert [call.args for call in recorder.named("add")] == [(2, 3)]
    assert [(a.status, a.url) for a in attempts] == [
        (200, f"{harness.handler_host}/cloudtasks/execute/")
    ]
    assert result.status == TaskResultStatus.READY  # Nothing stores results here.


def test_held_tasks_are_asserted_without_running(harness: CloudTasksHarness) -> None:
    later = timezone.now() + timedelta(hours=1)
    harness.hold()

    greet.using(run_after=later).enqueue("Ada", greeting="Hi")
    on_high_priority_queue.enqueue()

    enqueued = harness.assert_enqueued(greet, ["Ada"], {"greeting": "Hi"}, run_after=later)
    assert enqueued.queue_name == "default"
    harness.assert_enqueued(on_high_priority_queue, queue_name="high-priority", count=1)
    assert harness.dispatches == []
    assert recorder.calls == []


def test_a_wrong_expectation_lists_what_was_enqueued(harness: CloudTasksHarness) -> None:
    harness.hold()
    greet.enqueue("Ada")

    with pytest.raises(AssertionError, match=r"found 0\. Enqueued:\n  tests\.tasks\.greet\("):
        harness.assert_enqueued(greet, ["Grace"])
    with pytest.raises(AssertionError, match="Expected no task enqueued"):
        harness.assert_nothing_enqueued()


def test_run_pending_runs_held_and_delayed_tasks_now(harness: CloudTasksHarness) -> None:
    harness.hold()
    add.using(run_after=timezone.now() + timedelta(days=1)).enqueue(1, 1)
    greet.enqueue("Ada")

    attempts = harness.run_pending()

    assert sorted(call.name for call in recorder.calls) == ["add", "greet"]
    assert sorted(a.status for a in attempts) == [200, 200]
    # Still held: what comes next waits again.
    add.enqueue(5, 5)
    with pytest.raises(AssertionError, match="held"):
        harness.wait()


def test_a_failing_task_is_retried_quickly_then_given_up(harness: CloudTasksHarness) -> None:
    always_fails.enqueue()

    attempts = harness.wait()

    # The retry count Cloud Tasks sends: 0 on the first attempt.
    assert [(a.status, a.attempt) for a in attempts] == [(500, 0), (500, 1), (500, 2)]
    assert len(recorder.named("always_fails")) == 3


class TestCaseUsersGetTheSameHarness(CloudTasksTestCase):
    def test_a_task_runs_and_is_asserted(self) -> None:
        recorder.clear()
        add.enqueue(4, 4)
        self.cloud_tasks.wait()

        self.cloud_tasks.assert_enqueued(add, [4, 4])
        assert [call.args for call in recorder.named("add")] == [(4, 4)]
