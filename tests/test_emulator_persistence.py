"""A state file keeps everything across a restart: queues and their state and settings, waiting
tasks (which are dispatched after the restart), reserved task and queue names, and attempts."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from django_tasks_cloud_tasks.emulator import Emulator
from tests.servers import Target, tasks_client
from tests.test_emulator import LOCATION, PROJECT, http_task, in_seconds

PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


def emulator(state_file: Path) -> Emulator:
    return Emulator(project=PROJECT, location=LOCATION, queues=("default",), state_file=state_file)


def test_a_restart_loses_nothing(tmp_path: Path, target: Target) -> None:
    state = tmp_path / "emulator.sqlite3"
    target.reset()
    default = f"{PARENT}/queues/default"
    with emulator(state) as first:
        client = tasks_client(first.address)
        client.create_queue(
            parent=PARENT,
            queue={"name": f"{PARENT}/queues/held", "retry_config": {"max_attempts": 7}},
        )
        client.pause_queue(name=f"{PARENT}/queues/held")
        client.create_queue(parent=PARENT, queue={"name": f"{PARENT}/queues/dropped"})
        client.delete_queue(name=f"{PARENT}/queues/dropped")
        done = client.create_task(
            parent=default, task=http_task(target.url("/before"), name=f"{default}/tasks/done")
        )
        assert target.wait_for_hits(1, "/before")
        assert first.wait_until_idle(10)
        held = client.create_task(
            parent=f"{PARENT}/queues/held",
            task=http_task(target.url("/held"), name=f"{PARENT}/queues/held/tasks/named"),
        )
        eta = in_seconds(1.5)
        later = client.create_task(
            parent=default,
            task=http_task(
                target.url("/later"),
                schedule_time=eta,
                retry_config={"max_attempts": 1},
                http={"body": b"payload", "headers": {"Content-Type": "text/plain"}},
            ),
        )
        client.transport.close()
    assert target.hits("/later") == []

    with emulator(state) as second:
        client = tasks_client(second.address)
        queues = {q.name.rsplit("/", 1)[1]: q for q in client.list_queues(parent=PARENT)}
        assert sorted(queues) == ["default", "held"]
        assert queues["held"].state == tasks_v2.Queue.State.PAUSED
        assert queues["held"].retry_config.max_attempts == 7
        assert client.get_task(name=held.name) == held
        restored = client.get_task(name=later.name)
        assert restored.schedule_time == later.schedule_time
        assert restored.retry_config.max_attempts == 1
        # The names stay reserved.
        with pytest.raises(exceptions.AlreadyExists):
            client.create_task(parent=default, task=http_task(target.url("/x"), name=done.name))
        with pytest.raises(exceptions.FailedPrecondition):
            client.create_queue(
                parent=PARENT, queue={"name": f"{PARENT}/queues/dropped"}, retry=None
            )
        # The attempts made before the restart are still on record.
        assert [(d.task, d.status) for d in second.dispatches] == [("done", 200)]

        (hit,) = target.wait_for_hits(1, "/later", timeout=15)
        assert hit.at >= eta.timestamp()
        assert hit.body == b"payload"
        assert hit.headers["Content-Type"] == "text/plain"
        assert hit.headers["X-CloudTasks-TaskRetryCount"] == "0"
        client.transport.close()


def test_a_task_waiting_for_its_retry_keeps_its_counts(tmp_path: Path, target: Target) -> None:
    state = tmp_path / "emulator.sqlite3"
    target.reset()
    target.script("/flaky", 503)
    with emulator(state) as first:
        queue = first.create_queue("retried", min_backoff=1, max_backoff=1)
        client = tasks_client(first.address)
        client.create_task(parent=queue.name, task=http_task(target.url("/flaky")))
        assert target.wait_for_hits(1, "/flaky")
        client.transport.close()

    with emulator(state) as second:
        (_, retried) = target.wait_for_hits(2, "/flaky", timeout=15)
        assert retried.headers["X-CloudTasks-TaskRetryCount"] == "1"
        assert retried.headers["X-CloudTasks-TaskPreviousResponse"] == "503"
        assert second.wait_until_idle(10)


def test_reset_empties_the_state_file_but_keeps_the_queues(tmp_path: Path, target: Target) -> None:
    state = tmp_path / "emulator.sqlite3"
    with emulator(state) as first:
        first.create_queue("extra", max_dispatches_per_second=5)
        client = tasks_client(first.address)
        client.create_task(
            parent=f"{PARENT}/queues/default",
            task=http_task(target.url("/reset"), schedule_time=in_seconds(600)),
        )
        first.reset()
        client.transport.close()

    with emulator(state) as second:
        client = tasks_client(second.address)
        extra = client.get_queue(name=f"{PARENT}/queues/extra")
        assert extra.rate_limits.max_dispatches_per_second == 5
        assert client.list_tasks(parent=f"{PARENT}/queues/default").tasks == []
        client.transport.close()


def test_without_a_state_file_nothing_is_kept(target: Target) -> None:
    with Emulator(project=PROJECT, location=LOCATION, queues=("default",)) as first:
        first.create_queue("ephemeral")
    with Emulator(project=PROJECT, location=LOCATION, queues=("default",)) as second:
        client = tasks_client(second.address)
        assert [q.name for q in client.list_queues(parent=PARENT)] == [f"{PARENT}/queues/default"]
        client.transport.close()
