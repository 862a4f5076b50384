"""The pytest plugin of this package (a ``pytest11`` entry point): fixtures for the real path.

``cloud_tasks`` runs a test's tasks through the in-process emulator (real gRPC) and pytest-django's
live server; see ``testing.CloudTasksHarness`` for what it offers.

Tasks are validated against their backend when their module is imported, which happens at
collection, before any fixture runs: a ``CloudTasksBackend`` that cannot tell its project there
would fail the whole run. So, unless the environment already names an emulator, this plugin sets
``CLOUD_TASKS_EMULATOR_HOST`` before Django starts, to an address where nothing listens: the
backend then resolves its local defaults instead of asking Google Cloud, and an enqueue outside the
fixtures fails at once instead of reaching a real queue. Everything heavy is imported only when a
fixture is used, since pytest loads this plugin in every project that installs the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .emulator import Emulator
    from .testing import CloudTasksHarness

__all__ = ["cloud_tasks", "cloud_tasks_emulator"]

# Port 1 (tcpmux) is privileged and unused: connections are refused at once.
NOWHERE = "127.0.0.1:1"


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    # Before pytest-django's own hook, which sets Django up (and so may import tasks).
    os.environ.setdefault("CLOUD_TASKS_EMULATOR_HOST", NOWHERE)


@pytest.fixture(scope="session")
def cloud_tasks_emulator(live_server: Any) -> Iterator[Emulator]:
    """The in-process Cloud Tasks emulator, shared by the session's tests.

    It asks for the live server so that it stops first (see ``testing.start_emulator``).
    """
    from .testing import start_emulator

    emulator = start_emulator()
    yield emulator
    emulator.stop()


@pytest.fixture
def cloud_tasks(cloud_tasks_emulator: Emulator, live_server: Any) -> Iterator[CloudTasksHarness]:
    """This test's tasks go through the emulator to the live server: enqueue, then ``wait()``."""
    from .testing import CloudTasksHarness

    harness = CloudTasksHarness(cloud_tasks_emulator, live_server.url)
    harness.start()
    yield harness
    harness.stop()
