"""The Cloud Tasks emulator, driven by the unmodified Google clients over real gRPC, dispatching to
a real local HTTP target."""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import google.auth.transport.requests
import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import (
    CloudTasksGrpcAsyncIOTransport,
)
from google.oauth2 import id_token
from google.rpc import code_pb2

from django_tasks_cloud_tasks import oidc
from django_tasks_cloud_tasks.emulator import OIDC_CONFIG_METHOD, Emulator
from tests.servers import Reply, Target, tasks_client

PROJECT = "demo-project"
LOCATION = "us-central1"
LOCATION_NAME = f"projects/{PROJECT}/locations/{LOCATION}"
DEFAULT_QUEUE = f"{LOCATION_NAME}/queues/default"
QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue "
    "to initialize."
)
TASK_GONE = (
    "The task no longer exists, though a task with this name existed recently. The task either "
    "successfully completed or was deleted."
)
SERVICE_ACCOUNT = "tasks@demo-project.iam.gserviceaccount.com"


# Fixtures


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator(project=PROJECT, location=LOCATION, queues=("default",)) as em:
        yield em


@pytest.fixture
def em(shared_emulator: Emulator, target: Target) -> Emulator:
    shared_emulator.reset()
    target.reset()
    return shared_emulator


@pytest.fixture(scope="module")
def client(shared_emulator: Emulator) -> Iterator[tasks_v2.CloudTasksClient]:
    client = tasks_client(shared_emulator.address)
    yield client
    client.transport.close()


_queue_ids = itertools.count()


def new_queue(em: Emulator, **settings: Any) -> str:
    """A fresh queue (fast retries unless told otherwise); returns its full name."""
    settings.setdefault("min_backoff", 0.05)
    settings.setdefault("max_backoff", 0.2)
    queue = em.create_queue(f"q{next(_queue_ids)}", **settings)
    return str(queue.name)


def http_task(url: str, http: dict[str, Any] | None = None, **fields: Any) -> tasks_v2.Task:
    """An HTTP task for ``url``; ``http`` holds more HttpRequest fields."""
    return tasks_v2.Task(http_request={"url": url, **(http or {})}, **fields)


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def wait_until(condition: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def short(name: str) -> str:
    return name.rpartition("/")[2]


# Queues


def test_queue_defaults_match_an_api_created_queue(
    em: Emulator, client: tasks_v2.CloudTasksClient
) -> None:
    queue = client.get_queue(name=DEFAULT_QUEUE)
    assert queue.state == tasks_v2.Queue.State.RUNNING
    assert queue.rate_limits.max_dispatches_per_second == 500
    assert queue.rate_limits.max_burst_size == 100
    assert queue.rate_limits.max_concurrent_dispatches == 1000
    assert queue.retry_config.max_attempts == 100
    assert queue.retry_config.min_backoff == timedelta(seconds=0.1)
    assert queue.retry_config.max_backoff == timedelta(seconds=3600)
    assert queue.retry_config.max_doublings == 16
    assert queue.retry_config.max_retry_duration == timedelta(0)


def test_queue_lifecycle_and_paging(em: Emulator, client: tasks_v2.CloudTasksClient) -> None:
    parent = f"projects/{PROJECT}/locations/europe-west1"
    names = [f"{parent}/queues/paged-{i}" for i in range(5)]
    for name in names:
        created = client.create_queue(
            parent=parent,
            queue=tasks_v2.Queue(name=name, retry_config={"max_attempts": -1}),
        )
        assert created.retry_config.max_attempts == -1
    pages = client.list_queues(request={"parent": parent, "page_size": 2}).pages
    assert [[q.name for q in page.queues] for page in pages] == [names[:2], names[2:4], names[4:]]

    assert client.pause_queue(name=names[0]).state == tasks_v2.Queue.State.PAUSED
    assert client.get_queue(name=names[0]).state == tasks_v2.Queue.State.PAUSED
    assert client.resume_queue(name=names[0]).state == tasks_v2.Queue.State.RUNNING

    client.delete_queue(name=names[0])
    with pytest.raises(exceptions.NotFound):
        client.get_queue(name=names[0], retry=None)
    assert [q.name for q in client.list_queues(parent=parent)] == names[1:]


def test_queue_errors(em: Emulator, client: tasks_v2.CloudTasksClient) -> None:
    with pytest.raises(exceptions.AlreadyExists, match="Queue already exists"):
        client.create_queue(parent=LOCATION_NAME, queue=tasks_v2.Queue(name=DEFAULT_QUEUE))
    with pytest.raises(exceptions.InvalidArgument, match="Queue name must be formatted"):
        client.create_queue(
            parent=LOCATION_NAME, queue=tasks_v2.Queue(name=f"{LOCATION_NAME}/queues/a_b")
        )
    with pytest.raises(exceptions.NotFound, match="Queue does not exist"):
        client.pause_queue(name=f"{LOCATION_NAME}/queues/missing")
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        client.delete_queue(name=f"{LOCATION_NAME}/queues/missing", retry=None)


def test_unregistered_methods_are_unimplemented_and_say_it_is_the_emulator(
    em: Emulator, client: tasks_v2.CloudTasksClient
) -> None:
    with pytest.raises(exceptions.MethodNotImplemented) as refused:
        client.get_iam_policy(resource=DEFAULT_QUEUE, retry=None)
    assert "The Cloud Tasks emulator does not implement" in refused.value.message
    assert "GetIamPolicy" in refused.value.message


# Tasks over the API


def test_create_get_list_delete_task(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    created = client.create_task(
        parent=queue,
        task=http_task(
            target.url("/later"),
            http={"body": b"{}", "headers": {"content-type": "application/json"}},
            schedule_time=in_seconds(3600),
        ),
    )
    assert re.fullmatch(rf"{queue}/tasks/\d{{10,}}", created.name)
    assert dict(created.http_request.headers) == {
        "content-type": "application/json",
        "User-Agent": "Google-Cloud-Tasks",
    }
    assert created.http_request.http_method == tasks_v2.HttpMethod.POST
    assert created.http_request.body == b"{}"
    assert created.dispatch_deadline == timedelta(minutes=10)
    assert created.view == tasks_v2.Task.View.BASIC
    assert created.create_time.timestamp() == pytest.approx(time.time(), abs=2)
    assert created.schedule_time.timestamp() == pytest.approx(time.time() + 3600, abs=2)
    assert created.dispatch_count == 0

    fetched = client.get_task(name=created.name)
    assert fetched == created
    full = client.get_task(request={"name": created.name, "response_view": tasks_v2.Task.View.FULL})
    assert full.view == tasks_v2.Task.View.FULL
    assert full.http_request.body == b"{}"

    more = [
        client.create_task(
            parent=queue, task=http_task(target.url("/later"), schedule_time=in_seconds(3600))
        ).name
        for _ in range(4)
    ]
    pages = client.list_tasks(request={"parent": queue, "page_size": 2}).pages
    listed = [[task.name for task in page.tasks] for page in pages]
    assert [len(page) for page in listed] == [2, 2, 1]
    assert sorted(itertools.chain(*listed)) == sorted([created.name, *more])

    client.delete_task(name=created.name)
    with pytest.raises(exceptions.NotFound, match=re.escape(TASK_GONE)):
        client.get_task(name=created.name, retry=None)
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        client.get_task(name=f"{queue}/tasks/never-existed", retry=None)
    assert len(list(client.list_tasks(parent=queue))) == 4
    assert target.hits() == []


def test_unknown_queue_is_not_found(em: Emulator, client: tasks_v2.CloudTasksClient) -> None:
    with pytest.raises(exceptions.NotFound) as raised:
        client.create_task(
            parent=f"{LOCATION_NAME}/queues/missing", task=http_task("http://example.test/")
        )
    assert raised.value.message == QUEUE_MISSING


def test_duplicate_task_name_already_exists(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    task = http_task(
        target.url("/later"),
        name=f"{DEFAULT_QUEUE}/tasks/dedup-key",
        schedule_time=in_seconds(3600),
    )
    client.create_task(parent=DEFAULT_QUEUE, task=task)
    with pytest.raises(exceptions.AlreadyExists, match="Requested entity already exists"):
        client.create_task(parent=DEFAULT_QUEUE, task=task)


def test_a_recently_completed_name_stays_reserved(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    task = http_task(target.url("/ok"), name=f"{DEFAULT_QUEUE}/tasks/once")
    client.create_task(parent=DEFAULT_QUEUE, task=task)
    assert em.wait_until_idle()
    assert [d.status for d in em.dispatches] == [200]
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=DEFAULT_QUEUE, task=task)
    with pytest.raises(exceptions.NotFound, match=re.escape(TASK_GONE)):
        client.get_task(name=task.name, retry=None)


def test_tombstones_expire_after_the_configured_window(target: Target) -> None:
    with Emulator(project=PROJECT, location=LOCATION, tombstone_seconds=0.3) as em:
        client = tasks_client(em.address)
        task = http_task(
            target.url("/later"),
            name=f"{DEFAULT_QUEUE}/tasks/short-lived",
            schedule_time=in_seconds(3600),
        )
        client.create_task(parent=DEFAULT_QUEUE, task=task)
        client.delete_task(name=task.name)
        with pytest.raises(exceptions.AlreadyExists):
            client.create_task(parent=DEFAULT_QUEUE, task=task)
        time.sleep(0.35)
        assert client.create_task(parent=DEFAULT_QUEUE, task=task).name == task.name
        client.transport.close()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        pytest.param(
            http_task("http://example.test/", http={"body": b"x" * (1024 * 1024)}),
            "Task size",
            id="larger-than-1-MiB",
        ),
        pytest.param(
            http_task("http://example.test/", schedule_time=in_seconds(31 * 24 * 3600)),
            "30 days",
            id="more-than-30-days-ahead",
        ),
        pytest.param(
            http_task("http://example.test/", name=f"{DEFAULT_QUEUE}/tasks/not a valid id"),
            'Task ID "not a valid id" can contain only letters',
            id="bad-task-id",
        ),
        pytest.param(
            http_task("http://example.test/", name=f"{LOCATION_NAME}/queues/other/tasks/a"),
            "must be the same as the queue name in the named task",
            id="name-under-another-queue",
        ),
        pytest.param(tasks_v2.Task(http_request={"body": b"x"}), "url", id="no-url"),
        pytest.param(http_task("ftp://example.test/"), "http://", id="not-http"),
        pytest.param(http_task("http://example.test/" + "a" * 2100), "2083", id="url-too-long"),
        pytest.param(
            http_task("http://example.test/", http={"http_method": "GET", "body": b"x"}),
            "body is allowed only with POST, PUT or PATCH",
            id="body-with-get",
        ),
        pytest.param(
            http_task("http://example.test/", dispatch_deadline=timedelta(seconds=5)),
            "dispatch_deadline",
            id="deadline-too-short",
        ),
        pytest.param(
            http_task("http://example.test/", dispatch_deadline=timedelta(minutes=31)),
            "dispatch_deadline",
            id="deadline-too-long",
        ),
    ],
)
def test_invalid_tasks_are_rejected(
    em: Emulator, client: tasks_v2.CloudTasksClient, task: tasks_v2.Task, message: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=re.escape(message)):
        client.create_task(parent=DEFAULT_QUEUE, task=task)
    assert list(client.list_tasks(parent=DEFAULT_QUEUE)) == []


def test_purge_removes_every_task_and_reserves_their_names(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    task = http_task(
        target.url("/later"), name=f"{queue}/tasks/purged", schedule_time=in_seconds(3600)
    )
    client.create_task(parent=queue, task=task)
    for _ in range(2):
        client.create_task(
            parent=queue, task=http_task(target.url("/later"), schedule_time=in_seconds(3600))
        )
    purged = client.purge_queue(name=queue)
    assert purged.purge_time.timestamp() == pytest.approx(time.time(), abs=2)
    assert list(client.list_tasks(parent=queue)) == []
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue, task=task)
    assert em.wait_until_idle(timeout=1)


def test_reset_forgets_tasks_names_and_dispatches_but_keeps_queues(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    task = http_task(target.url("/ok"), name=f"{queue}/tasks/reused")
    client.create_task(parent=queue, task=task)
    client.create_task(
        parent=queue, task=http_task(target.url("/ok"), schedule_time=in_seconds(60))
    )
    wait_until(lambda: len(em.dispatches) == 1)
    em.reset()
    assert em.dispatches == []
    assert list(client.list_tasks(parent=queue)) == []
    assert em.wait_until_idle(timeout=1)
    assert client.create_task(parent=queue, task=task).name == task.name


async def test_async_client(em: Emulator, target: Target) -> None:
    channel = grpc.aio.insecure_channel(em.address)
    client = tasks_v2.CloudTasksAsyncClient(
        transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
    )
    try:
        created = await client.create_task(
            parent=DEFAULT_QUEUE,
            task=http_task(target.url("/later"), schedule_time=in_seconds(3600)),
        )
        assert (await client.get_task(name=created.name)).name == created.name
        assert [task.name async for task in await client.list_tasks(parent=DEFAULT_QUEUE)] == [
            created.name
        ]
        await client.delete_task(name=created.name)
        with pytest.raises(exceptions.NotFound):
            await client.create_task(
                parent=f"{LOCATION_NAME}/queues/missing", task=http_task(target.url("/"))
            )
    finally:
        await channel.close()


def test_concurrent_creates_are_all_accepted_and_dispatched_once(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    names: list[str] = []
    errors: list[BaseException] = []

    def create_many() -> None:
        try:
            for _ in range(50):
                task = client.create_task(parent=DEFAULT_QUEUE, task=http_task(target.url("/bulk")))
                names.append(task.name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(names)) == 400
    assert em.wait_until_idle(timeout=15)
    dispatched = Counter(d.task for d in em.dispatches)
    assert set(dispatched) == {short(name) for name in names}
    assert set(dispatched.values()) == {1}
    received = Counter(hit.headers["X-CloudTasks-TaskName"] for hit in target.hits("/bulk"))
    assert received == dispatched


# Dispatch


def test_dispatch_sends_the_task_with_cloud_tasks_headers(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    task = http_task(
        target.url("/work?x=1"),
        http={
            "http_method": "PUT",
            "body": b'{"hello": "world"}',
            "headers": {"Content-Type": "application/json", "X-Custom": "kept"},
        },
        name=f"{DEFAULT_QUEUE}/tasks/headers-1",
    )
    created = client.create_task(parent=DEFAULT_QUEUE, task=task)
    (hit,) = target.wait_for_hits(1)
    assert (hit.method, hit.path, hit.body) == ("PUT", "/work?x=1", b'{"hello": "world"}')
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Custom"] == "kept"
    assert hit.headers["User-Agent"] == "Google-Cloud-Tasks"
    assert hit.headers["X-CloudTasks-QueueName"] == "default"
    assert hit.headers["X-CloudTasks-TaskName"] == "headers-1"
    assert hit.headers["X-CloudTasks-TaskRetryCount"] == "0"
    assert hit.headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert hit.headers["X-CloudTasks-TaskETA"] == f"{created.schedule_time.timestamp():.6f}"
    assert "X-CloudTasks-TaskPreviousResponse" not in hit.headers
    assert "X-CloudTasks-TaskRetryReason" not in hit.headers
    assert "Authorization" not in hit.headers

    assert em.wait_until_idle()
    (record,) = em.dispatches
    assert (record.queue, record.task, record.url, record.status, record.attempt) == (
        "default",
        "headers-1",
        target.url("/work?x=1"),
        200,
        0,
    )
    assert record.headers["X-CloudTasks-TaskName"] == "headers-1"
    assert record.started_at == pytest.approx(hit.at, abs=1)
    assert 0 <= record.duration < 1


def test_dispatch_waits_for_the_schedule_time(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    eta = in_seconds(0.4)
    client.create_task(
        parent=DEFAULT_QUEUE, task=http_task(target.url("/later"), schedule_time=eta)
    )
    (hit,) = target.wait_for_hits(1)
    assert eta.timestamp() <= hit.at < eta.timestamp() + 0.25


def test_retries_carry_counts_and_the_previous_response(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    target.script("/flaky", 500, 503, 404, 200)
    client.create_task(parent=queue, task=http_task(target.url("/flaky")))
    assert em.wait_until_idle()
    hits = target.hits("/flaky")
    seen = [
        (
            h.headers["X-CloudTasks-TaskRetryCount"],
            h.headers["X-CloudTasks-TaskExecutionCount"],
            h.headers.get("X-CloudTasks-TaskPreviousResponse"),
            h.headers.get("X-CloudTasks-TaskRetryReason"),
        )
        for h in hits
    ]
    # 5xx answers do not count as executions; a 404 does.
    assert seen == [
        ("0", "0", None, None),
        ("1", "0", "500", ""),
        ("2", "0", "503", ""),
        ("3", "1", "404", ""),
    ]
    assert [d.status for d in em.dispatches] == [500, 503, 404, 200]
    assert [d.attempt for d in em.dispatches] == [0, 1, 2, 3]
    # Backoff grows: 0.05 s, then 0.1 s, then 0.2 s (the cap).
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
    assert gaps[0] >= 0.045
    assert gaps[2] >= 0.19


def test_a_failed_attempt_is_recorded_on_the_task(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, min_backoff=30, max_backoff=60)
    target.script("/missing", 404)
    created = client.create_task(parent=queue, task=http_task(target.url("/missing")))
    assert wait_until(lambda: len(em.dispatches) == 1)
    task = client.get_task(name=created.name)
    assert task.dispatch_count == 1
    assert task.response_count == 1
    assert task.first_attempt.dispatch_time is not None
    assert task.last_attempt.schedule_time == created.schedule_time
    assert task.last_attempt.response_status.code == code_pb2.NOT_FOUND
    response_time = task.last_attempt.response_time.timestamp()
    assert task.schedule_time.timestamp() == pytest.approx(response_time + 30, abs=0.01)


def test_max_attempts_stops_retrying(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_attempts=3)
    target.script("/broken", *[500] * 10)
    created = client.create_task(parent=queue, task=http_task(target.url("/broken")))
    assert em.wait_until_idle()
    assert [d.status for d in em.dispatches] == [500, 500, 500]
    with pytest.raises(exceptions.NotFound, match=re.escape(TASK_GONE)):
        client.get_task(name=created.name, retry=None)


def test_max_retry_duration_keeps_retrying_past_max_attempts(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_attempts=2, max_retry_duration=0.4, max_backoff=0.05)
    target.script("/broken", *[500] * 100)
    client.create_task(parent=queue, task=http_task(target.url("/broken")))
    assert em.wait_until_idle()
    starts = [d.started_at for d in em.dispatches]
    assert len(starts) > 2
    assert starts[-1] - starts[0] >= 0.3


def test_connection_errors_are_retried(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    queue = new_queue(em, max_attempts=2)
    client.create_task(parent=queue, task=http_task(f"http://127.0.0.1:{closed_port}/"))
    assert em.wait_until_idle()
    first, second = em.dispatches
    assert (first.status, second.status) == (-1, -1)
    assert second.headers["X-CloudTasks-TaskRetryCount"] == "1"
    assert second.headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert "X-CloudTasks-TaskPreviousResponse" not in second.headers


def test_attempts_do_not_replay_cookies(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    target.script("/cookie", Reply(500, {"Set-Cookie": "sessionid=abc; Path=/"}))
    client.create_task(parent=queue, task=http_task(target.url("/cookie")))
    _, retried = target.wait_for_hits(2)
    assert "Cookie" not in retried.headers


def test_retry_after_delays_the_next_attempt(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    target.script("/busy", Reply(503, {"Retry-After": "1"}))
    client.create_task(parent=queue, task=http_task(target.url("/busy")))
    first, second = target.wait_for_hits(2, timeout=3)
    assert second.at - first.at >= 1


def test_pause_holds_dispatch_until_resume(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    client.pause_queue(name=queue)
    client.create_task(parent=queue, task=http_task(target.url("/paused")))
    time.sleep(0.3)
    assert target.hits() == []
    assert not em.wait_until_idle(timeout=0.05)
    client.resume_queue(name=queue)
    assert len(target.wait_for_hits(1)) == 1


def test_run_task_dispatches_at_once_even_when_paused(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    client.pause_queue(name=queue)
    created = client.create_task(
        parent=queue, task=http_task(target.url("/forced"), schedule_time=in_seconds(3600))
    )
    ran = client.run_task(name=created.name)
    assert ran.dispatch_count == 1
    assert ran.last_attempt.dispatch_time is not None
    assert len(target.wait_for_hits(1)) == 1
    assert em.wait_until_idle()


def test_deleted_and_purged_tasks_are_not_dispatched(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    deleted = client.create_task(
        parent=queue, task=http_task(target.url("/never"), schedule_time=in_seconds(0.2))
    )
    client.create_task(
        parent=queue, task=http_task(target.url("/never"), schedule_time=in_seconds(0.2))
    )
    client.delete_task(name=deleted.name)
    client.purge_queue(name=queue)
    time.sleep(0.4)
    assert target.hits() == []


def test_rate_limit_paces_dispatches(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_dispatches_per_second=10, max_burst_size=1)
    for _ in range(3):
        client.create_task(parent=queue, task=http_task(target.url("/paced")))
    hits = target.wait_for_hits(3)
    assert hits[-1].at - hits[0].at >= 0.18


def test_concurrency_limit_serialises_dispatches(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_concurrent_dispatches=1)
    target.script("/slow", *[Reply(delay=0.1)] * 3)
    for _ in range(3):
        client.create_task(parent=queue, task=http_task(target.url("/slow")))
    hits = target.wait_for_hits(3)
    assert all(b.at - a.at >= 0.09 for a, b in itertools.pairwise(hits))
    assert em.wait_until_idle()


# OIDC


def test_oidc_token_verifies_with_google_auth(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    audience = "https://app.example.test/tasks/"
    client.create_task(
        parent=DEFAULT_QUEUE,
        task=http_task(
            target.url("/secure"),
            http={"oidc_token": {"service_account_email": SERVICE_ACCOUNT, "audience": audience}},
        ),
    )
    client.create_task(
        parent=DEFAULT_QUEUE,
        task=http_task(
            target.url("/default-audience"),
            http={"oidc_token": {"service_account_email": SERVICE_ACCOUNT}},
        ),
    )
    target.wait_for_hits(2)
    (secure,) = target.hits("/secure")
    (default,) = target.hits("/default-audience")
    request = google.auth.transport.requests.Request()
    token = secure.headers["Authorization"].removeprefix("Bearer ")
    claims = id_token.verify_token(token, request, audience=audience, certs_url=em.certs_url)
    assert claims["iss"] == em.issuer
    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert claims["sub"] == claims["azp"]
    assert claims["sub"].isdigit()
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] == pytest.approx(time.time(), abs=5)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert re.fullmatch(r"[0-9a-f]{16}", header["kid"])
    with pytest.raises(ValueError, match="audience"):
        id_token.verify_token(token, request, audience="https://other/", certs_url=em.certs_url)

    default_token = default.headers["Authorization"].removeprefix("Bearer ")
    default_claims = id_token.verify_token(
        default_token, request, audience=target.url("/default-audience"), certs_url=em.certs_url
    )
    assert default_claims["sub"] == claims["sub"]


def test_token_server_publishes_discovery_documents(em: Emulator) -> None:
    discovery = requests.get(f"{em.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == em.issuer
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    jwks = requests.get(discovery["jwks_uri"], timeout=5).json()
    (key,) = jwks["keys"]
    assert (key["kty"], key["alg"]) == ("RSA", "RS256")
    certs = requests.get(em.certs_url, timeout=5)
    assert certs.headers["Cache-Control"] == "public, max-age=3600"
    assert list(certs.json()) == [key["kid"]]
    certificate = x509.load_pem_x509_certificate(certs.json()[key["kid"]].encode())
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    numbers = public_key.public_numbers()
    assert (numbers.n, numbers.e) == (_base64url_int(key["n"]), _base64url_int(key["e"]))
    assert requests.get(f"{em.issuer}/nothing", timeout=5).status_code == 404


def _base64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def test_oidc_config_is_discoverable_over_grpc(em: Emulator) -> None:
    with grpc.insecure_channel(em.address) as channel:
        answer = channel.unary_unary(OIDC_CONFIG_METHOD)(b"", timeout=5)
    assert json.loads(answer) == {"issuer": em.issuer, "certs_url": em.certs_url}


def test_an_issuer_url_given_for_other_hosts_is_the_one_tokens_and_the_backend_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        token_port = sock.getsockname()[1]
    # "localhost" stands in for the name another container knows the emulator by.
    issuer = f"http://localhost:{token_port}"
    with Emulator(queues=(), token_port=token_port, issuer=issuer + "/") as em:
        token = em.mint_token(email="a@example.com", audience="https://app.example.com")

        assert (em.issuer, em.certs_url) == (issuer, f"{issuer}/certs")
        claims = oidc.verify(token, oidc.emulator_issuer(em.address))
        assert claims["iss"] == issuer


def test_an_issuer_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        Emulator(queues=(), issuer="emulator:8124")


# Lifecycle


def test_logs_one_line_per_dispatch_and_stops_promptly(target: Target) -> None:
    lines: list[str] = []
    em = Emulator(project=PROJECT, location=LOCATION, log=lines.append).start()
    client = tasks_client(em.address)
    try:
        client.create_task(parent=DEFAULT_QUEUE, task=http_task(target.url("/logged")))
        assert em.wait_until_idle()
        (line,) = lines
        assert re.fullmatch(
            rf"POST {re.escape(target.url('/logged'))} -> 200 in \d+ ms "
            r"\(queue=default task=\d+ retry=0\)",
            line,
        )
        target.script("/hang", Reply(delay=3))
        client.create_task(parent=DEFAULT_QUEUE, task=http_task(target.url("/hang")))
        target.wait_for_hits(1, path="/hang")
        started = time.perf_counter()
        em.stop()
        assert time.perf_counter() - started < 1
        with pytest.raises(exceptions.ServiceUnavailable):
            client.create_task(parent=DEFAULT_QUEUE, task=http_task(target.url("/late")))
        with pytest.raises(requests.ConnectionError):
            requests.get(em.certs_url, timeout=1)
    finally:
        em.stop()
        client.transport.close()
