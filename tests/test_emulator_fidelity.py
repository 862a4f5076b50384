"""Where the emulator behaves like Cloud Tasks under load and at the edges: attempts in flight
per queue, queues that do not wait for each other, a task's own retry settings, redirects, and
deleted queues' names. Driven by the unmodified client over real gRPC."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2

from django_tasks_cloud_tasks.emulator import Emulator
from django_tasks_cloud_tasks.emulator.sender import Sender
from tests.servers import BackgroundServer, Reply, Target, tasks_client
from tests.test_emulator import LOCATION, PROJECT, http_task, new_queue

LOCATION_NAME = f"projects/{PROJECT}/locations/{LOCATION}"


class Gate(BackgroundServer):
    """An HTTP target that holds every request until released, counting those it holds."""

    request_queue_size = 1024

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.held = 0
        self.peak = 0
        self.released = threading.Event()
        super().__init__(_GateHandler)
        self.url = f"{self.base_url}/held"

    def wait_for_held(self, count: int, timeout: float = 60) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.held >= count, timeout)

    def close(self) -> None:
        self.released.set()
        super().close()


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gate

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        gate = self.server
        with gate.changed:
            gate.held += 1
            gate.peak = max(gate.peak, gate.held)
            gate.changed.notify_all()
        gate.released.wait(60)
        with gate.changed:
            gate.held -= 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gate() -> Iterator[Gate]:
    server = Gate()
    yield server
    server.close()


@pytest.fixture
def em(target: Target) -> Iterator[Emulator]:
    target.reset()
    with Emulator(project=PROJECT, location=LOCATION, queues=(), queue_reuse_seconds=0) as em:
        yield em


@pytest.fixture
def client(em: Emulator) -> Iterator[tasks_v2.CloudTasksClient]:
    client = tasks_client(em.address)
    yield client
    client.transport.close()


# Attempts in flight


def test_a_queue_has_as_many_attempts_in_flight_as_its_concurrency_allows(
    em: Emulator, client: tasks_v2.CloudTasksClient, gate: Gate
) -> None:
    # Far more than the 32 workers the emulator once had in all.
    queue = new_queue(em, max_concurrent_dispatches=120, max_burst_size=200)
    for _ in range(150):
        client.create_task(parent=queue, task=http_task(gate.url))

    assert gate.wait_for_held(120)
    gate.released.set()
    assert em.wait_until_idle(60)
    assert gate.peak == 120
    assert len(em.dispatches) == 150


def test_a_queue_full_of_slow_attempts_does_not_hold_up_another(
    em: Emulator, client: tasks_v2.CloudTasksClient, gate: Gate, target: Target
) -> None:
    slow = new_queue(em, max_burst_size=100)
    fast = new_queue(em)
    for _ in range(60):
        client.create_task(parent=slow, task=http_task(gate.url))
    assert gate.wait_for_held(60)

    client.create_task(parent=fast, task=http_task(target.url("/fast")))

    assert target.wait_for_hits(1, "/fast", timeout=30)
    assert gate.held == 60
    gate.released.set()


# A task's own retry settings


def test_a_task_retry_config_overrides_the_queues(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_attempts=10)
    target.script("/task-retry", *[500] * 10)
    task = http_task(
        target.url("/task-retry"),
        retry_config={"max_attempts": 2, "min_backoff": timedelta(seconds=0.05)},
    )
    created = client.create_task(parent=queue, task=task)

    assert created.retry_config.max_attempts == 2
    assert em.wait_until_idle(10)
    assert [d.status for d in em.dispatches] == [500, 500]


def test_fields_a_task_retry_config_leaves_unset_come_from_the_queue(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em, max_attempts=3)
    target.script("/partial-retry", *[500] * 10)
    task = http_task(target.url("/partial-retry"), retry_config={"max_doublings": 1})
    client.create_task(parent=queue, task=task)

    assert em.wait_until_idle(10)
    assert len(em.dispatches) == 3


@pytest.mark.parametrize(
    ("retry_config", "reason"),
    [
        ({"max_attempts": -2}, "max_attempts must be positive"),
        ({"min_backoff": timedelta(seconds=5)}, "min_backoff must not exceed max_backoff"),
        ({"max_doublings": -1}, "max_doublings must not be negative"),
    ],
    ids=["attempts-below-unlimited", "min-above-queue-max", "negative-doublings"],
)
def test_an_inconsistent_task_retry_config_is_refused(
    em: Emulator,
    client: tasks_v2.CloudTasksClient,
    target: Target,
    retry_config: dict[str, Any],
    reason: str,
) -> None:
    queue = new_queue(em)  # max_backoff 0.2 s
    task = http_task(target.url("/never"), retry_config=retry_config)
    with pytest.raises(exceptions.InvalidArgument, match=reason):
        client.create_task(parent=queue, task=task)
    assert client.list_tasks(parent=queue).tasks == []


# Redirects


def test_a_redirect_is_a_failed_attempt_retried_and_never_followed(target: Target) -> None:
    lines: list[str] = []
    target.reset()
    target.script("/no-slash", *[Reply(301, {"Location": "/no-slash/"})] * 2)
    with Emulator(project=PROJECT, location=LOCATION, queues=(), log=lines.append) as em:
        queue = new_queue(em, max_attempts=2)
        client = tasks_client(em.address)
        client.create_task(parent=queue, task=http_task(target.url("/no-slash")))
        assert em.wait_until_idle(10)
        client.transport.close()

    assert [d.status for d in em.dispatches] == [301, 301]
    assert target.hits("/no-slash/") == []
    assert "-> 301 (redirect to /no-slash/ not followed)" in lines[0]


# A deleted queue's name


def test_a_deleted_queues_name_is_reserved_for_the_configured_wait(target: Target) -> None:
    with Emulator(project=PROJECT, location=LOCATION, queues=("kept",)) as em:
        client = tasks_client(em.address)
        name = f"{LOCATION_NAME}/queues/kept"
        client.delete_queue(name=name)
        with pytest.raises(exceptions.FailedPrecondition, match="existed too recently"):
            client.create_queue(parent=LOCATION_NAME, queue={"name": name}, retry=None)
        client.transport.close()


def test_with_no_wait_a_deleted_queues_name_can_be_used_at_once(
    em: Emulator, client: tasks_v2.CloudTasksClient
) -> None:
    name = new_queue(em)
    client.delete_queue(name=name)
    assert client.create_queue(parent=LOCATION_NAME, queue={"name": name}).name == name


# The HTTP exchange


class ClosingTarget:
    """Answers each request on a keep-alive connection, then closes it without saying so, as a
    server whose idle timeout has passed does."""

    def __init__(self) -> None:
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._sock.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(4096)
                self.requests += 1
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self._sock.close()


def test_a_keep_alive_connection_the_target_closed_is_not_a_failed_attempt(
    em: Emulator, client: tasks_v2.CloudTasksClient
) -> None:
    closing = ClosingTarget()
    queue = new_queue(em, max_concurrent_dispatches=1)
    for _ in range(3):
        client.create_task(parent=queue, task=http_task(closing.url))
        assert em.wait_until_idle(10)
    closing.close()
    assert [d.status for d in em.dispatches] == [200, 200, 200]
    assert closing.requests == 3


def test_a_url_is_sent_quoted_as_http_requires(
    em: Emulator, client: tasks_v2.CloudTasksClient, target: Target
) -> None:
    queue = new_queue(em)
    client.create_task(parent=queue, task=http_task(target.url("/a path/é?q=a b&r=%2F")))
    (hit,) = target.wait_for_hits(1)
    assert hit.path == "/a%20path/%C3%A9?q=a%20b&r=%2F"


def test_an_answer_slower_than_the_deadline_is_a_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        sender = Sender()
        with pytest.raises(TimeoutError):
            sender.send("POST", silent_url, {}, b"x", timeout=0.2)
        sender.close()
