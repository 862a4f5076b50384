from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from asgiref.sync import sync_to_async
from django.db import connections
from google.cloud import tasks_v2
from hypothesis import settings as hypothesis_settings

from django_tasks_cloud_tasks.client import sync_client
from django_tasks_cloud_tasks.emulator import Emulator
from django_tasks_cloud_tasks.testing import TEST_QUEUE_RETRY, CloudTasksHarness
from tests.servers import Target
from tests.tasks import recorder, release_slow

# Property-based tests generate a sample every day and their full count in CI (.ci/run sets
# HYPOTHESIS_PROFILE=ci); each test states its full count with ``tests.examples.full``.
hypothesis_settings.register_profile("ci", print_blob=True)
hypothesis_settings.register_profile("dev")
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
# Servers the tests start inherit it, so one that will not stop can be made to show its stacks.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

PROJECT = "test-project"
LOCATION = "us-central1"
QUEUES = ("default", "high-priority", "urgent")


@pytest.fixture(autouse=True, scope="session")
def close_async_tests_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Close what async tests opened in asgiref's thread, before the test database is dropped.

    That thread outlives the tests, and PostgreSQL cannot drop a database still in use.
    """
    yield
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    with Emulator(host="127.0.0.1", port=0, project=PROJECT, location=LOCATION, queues=()) as em:
        for queue in QUEUES:
            # Fast retries keep the retry tests short; the backoff maths has its own tests.
            em.create_queue(queue, **TEST_QUEUE_RETRY)
        yield em


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """The emulator tests' HTTP target, one per test module."""
    server = Target()
    yield server
    server.close()


@pytest.fixture(scope="session")
def asgi_server() -> Iterator[tuple[str, str]]:
    """A live ASGI (uvicorn) server in this process: its URL and its event loop's thread name."""
    from django.core.asgi import get_asgi_application

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(get_asgi_application(), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="asgi-server", daemon=True
    )
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", thread.name
    server.should_exit = True
    thread.join(5)


class CloudTasks(CloudTasksHarness):
    """The package's harness (``testing.CloudTasksHarness``), with this suite's own configuration.

    ``settings`` is pytest-django's, so what a test changes is undone with the rest.
    """

    def __init__(self, emulator: Emulator, handler_host: str, settings: Any) -> None:
        super().__init__(emulator, handler_host)
        self.settings = settings

    def configure(self, **options: Any) -> None:
        """Replace the default backend's OPTIONS (keeping project, location and host).

        Unless a test configures authentication, the view runs unauthenticated requests: the
        security tests cover authentication end to end.
        """
        options.setdefault("ALLOW_UNAUTHENTICATED", True)
        self.settings.TASKS = {"default": backend_settings(self.handler_host, **options)}

    @property
    def client(self) -> tasks_v2.CloudTasksClient:
        """A Cloud Tasks client of the emulator: the backend's own, kept per address."""
        return sync_client(self.emulator.address)


def backend_settings(handler_host: str, **options: Any) -> dict[str, Any]:
    return {
        "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
        "QUEUES": [],
        "OPTIONS": {
            "CLOUD_TASKS_PROJECT": PROJECT,
            "CLOUD_TASKS_LOCATION": LOCATION,
            "TASK_HANDLER_HOST": handler_host,
            **options,
        },
    }


@pytest.fixture
def cloud_tasks(
    emulator: Emulator, live_server: Any, settings: Any, monkeypatch: Any
) -> Iterator[CloudTasks]:
    recorder.clear()
    harness = CloudTasks(emulator, live_server.url, settings)
    # Set through pytest-django and monkeypatch before the harness sets them too: those fixtures
    # are undone after the harness stops, and their first change is the one that restores.
    harness.configure()
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", emulator.address)
    harness.start()
    yield harness
    harness.stop()


@pytest.fixture
def stored(cloud_tasks: CloudTasks) -> Iterator[CloudTasks]:
    """The harness with the result store on; ``tasks.slow`` runs its full time unless released."""
    cloud_tasks.configure(STORE_RESULTS=True)
    release_slow.clear()
    yield cloud_tasks
    release_slow.set()
