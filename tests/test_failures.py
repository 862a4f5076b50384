"""Every row of the failures table (docs/failures.md) through a live server.

Each test asserts what the execute view answers, whether Cloud Tasks runs the task again, what the
result store shows, and how many times the task's side effect (a recorder call) happened. Where
WSGI and ASGI differ (a client that hangs up), both servers are tested.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import django
import pytest
import requests
from django.conf import settings
from django.core import checks
from django.db import OperationalError
from django.tasks import Task, TaskResult, TaskResultStatus, default_task_backend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist

from django_tasks_cloud_tasks import CloudTask
from django_tasks_cloud_tasks import task as cloud_task
from django_tasks_cloud_tasks.models import TaskRecord
from tests import tasks
from tests.conftest import CloudTasks
from tests.tasks import recorder
from tests.test_execute_view import body
from tests.tokens import SigningKey, google_claims

pytestmark = pytest.mark.django_db(transaction=True)

SERVERS = ["wsgi", "asgi"]


def on_server(cloud_tasks: CloudTasks, server: str, request: pytest.FixtureRequest) -> str:
    """The URL of the server the test asks for; Cloud Tasks delivers there too."""
    if server == "asgi":
        cloud_tasks.handler_host = request.getfixturevalue("asgi_server")[0]
        cloud_tasks.configure(STORE_RESULTS=True)
    return cloud_tasks.handler_host


def through_cloud_tasks(cloud_tasks: CloudTasks, task: Task[..., Any]) -> TaskResult[..., Any]:
    """Enqueue ``task`` and let the emulator deliver it, with retries, until it is done."""
    result = task.enqueue()
    assert cloud_tasks.emulator.wait_until_idle()
    result.refresh()
    return result


def statuses(cloud_tasks: CloudTasks) -> list[int]:
    return [dispatch.status for dispatch in cloud_tasks.emulator.dispatches]


def side_effects(name: str) -> int:
    return len(recorder.named(name))


def deliver(
    handler_host: str, document: dict[str, Any], retries: int = 0, **kwargs: Any
) -> requests.Response:
    """A delivery as Cloud Tasks makes it: the body and the retry count header."""
    headers = {"X-CloudTasks-TaskRetryCount": str(retries), **kwargs.pop("headers", {})}
    url = f"{handler_host}/cloudtasks/execute/"
    return requests.post(url, data=json.dumps(document), headers=headers, timeout=10, **kwargs)


def deliver_and_hang_up(handler_host: str, document: dict[str, Any], started: str) -> None:
    """Deliver, and close the connection once the task has started: Cloud Tasks at its deadline."""
    address = urlsplit(handler_host)
    data = json.dumps(document).encode()
    head = (
        "POST /cloudtasks/execute/ HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(head.encode() + data)
        recorder.wait_for(1, timeout=20)
        assert recorder.named(started)


def wait_for_row(task_id: str, status: TaskResultStatus, timeout: float = 20.0) -> TaskRecord:
    """Wait until the stored result reaches ``status`` (the server writes it in its own time)."""
    deadline = time.monotonic() + timeout
    while True:
        record = TaskRecord.objects.filter(pk=task_id).first()
        if record is not None and record.status == status:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} did not become {status}: {record and record.status}")
        time.sleep(0.05)


# --- The task raised ------------------------------------------------------------------------


def test_a_task_that_raises_is_retried_until_the_queue_gives_up(stored: CloudTasks) -> None:
    result = through_cloud_tasks(stored, tasks.always_fails)

    assert side_effects("always_fails") == 3  # The emulator's queues allow three attempts.
    assert statuses(stored) == [500, 500, 500]
    assert result.status == TaskResultStatus.FAILED


def test_an_error_answer_names_the_exception_class_and_the_log_has_the_rest(
    cloud_tasks: CloudTasks, caplog: pytest.LogCaptureFixture
) -> None:
    document = body(task_path="tests.tasks.fails_twice_at_most", args=[], takes_context=True)

    with caplog.at_level(logging.WARNING, logger="django_tasks_cloud_tasks"):
        response = deliver(cloud_tasks.handler_host, document)

    assert response.status_code == 500
    assert response.json() == {
        "status": "error",
        "task_id": "test-task-001",
        "error": "RuntimeError",
    }
    assert "hunter2" not in response.text
    (record,) = [r for r in caplog.records if r.name == "django_tasks_cloud_tasks.execution"]
    assert record.exc_info is not None
    assert "secret=hunter2" in caplog.text
    assert (record.task_id, record.task_path, record.attempt, record.queue_name) == (
        "test-task-001",
        "tests.tasks.fails_twice_at_most",
        1,
        "default",
    )


# --- Permanent failure, and attempts capped by the task ---------------------------------------


def test_a_permanent_failure_is_recorded_and_not_retried(stored: CloudTasks) -> None:
    result = through_cloud_tasks(stored, tasks.declines_the_card)

    assert side_effects("declines_the_card") == 1
    assert statuses(stored) == [200]
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == "tests.tasks.CardDeclined"


def test_a_permanent_failure_answers_2xx_naming_its_class(cloud_tasks: CloudTasks) -> None:
    response = deliver(
        cloud_tasks.handler_host, body(task_path="tests.tasks.declines_the_card", args=[])
    )

    assert response.status_code == 200
    assert response.json() == {
        "status": "failed",
        "task_id": "test-task-001",
        "error": "tests.tasks.CardDeclined",
    }


def test_max_attempts_caps_the_attempts_below_the_queues_limit(stored: CloudTasks) -> None:
    result = through_cloud_tasks(stored, tasks.fails_twice_at_most)

    assert [call.attempt for call in recorder.named("fails_twice_at_most")] == [1, 2]
    assert statuses(stored) == [500, 200]
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 2


@pytest.mark.skipif(django.VERSION < (6, 1), reason="Django 6.0's @task takes no extra arguments")
def test_djangos_task_decorator_passes_max_attempts_to_the_backends_task_class() -> None:
    from django.tasks import task

    capped = task(max_attempts=3)(tasks.add.func)

    assert isinstance(capped, CloudTask)
    assert capped.max_attempts == 3


@pytest.mark.parametrize("max_attempts", [0, -1, 1.5, True, "3"], ids=repr)
def test_max_attempts_must_be_a_whole_number_of_at_least_one(max_attempts: object) -> None:
    with pytest.raises(InvalidTask, match="max_attempts"):
        cloud_task(max_attempts=max_attempts)(tasks.add.func)  # type: ignore[arg-type]


# --- The task ran, but its outcome cannot be stored -------------------------------------------


@pytest.mark.parametrize("task", [tasks.returns_a_set, tasks.returns_nan], ids=["set", "nan"])
def test_a_return_value_that_is_not_json_fails_the_task_for_good(
    stored: CloudTasks, task: Task[..., Any]
) -> None:
    result = through_cloud_tasks(stored, task)

    assert side_effects(task.name) == 1
    assert statuses(stored) == [200]
    assert result.status == TaskResultStatus.FAILED
    assert "its return value is not JSON" in result.errors[-1].traceback


def test_an_outcome_the_database_refuses_leaves_no_row_running(stored: CloudTasks) -> None:
    result = through_cloud_tasks(stored, tasks.returns_a_nul_character)

    assert side_effects("returns_a_nul_character") == 1
    assert statuses(stored) == [200]
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        assert result.status == TaskResultStatus.FAILED  # PostgreSQL's JSON refuses U+0000.
        assert "the database refused its outcome" in result.errors[-1].traceback
    else:
        assert result.status == TaskResultStatus.SUCCESSFUL


# --- A server fault before the task ran -------------------------------------------------------


@pytest.mark.parametrize(
    ("task_path", "error"),
    [
        ("tests.broken_tasks.needs_the_api_key", "KeyError"),
        ("tests.missing_dependency_tasks.needs_the_dependency", "ModuleNotFoundError"),
    ],
    ids=["raises-on-import", "missing-dependency"],
)
def test_a_task_module_that_fails_to_import_is_a_server_fault_with_its_traceback_logged(
    cloud_tasks: CloudTasks, caplog: pytest.LogCaptureFixture, task_path: str, error: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = deliver(cloud_tasks.handler_host, body(task_path=task_path, args=[]), retries=2)

    assert response.status_code == 500  # Cloud Tasks retries: a deploy may fix it.
    assert response.json()["status"] == "error"
    assert response.json()["error"] == error
    assert recorder.calls == []
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.exc_info is not None
    assert record.exc_info[0].__name__ == error
    assert (record.task_path, record.attempt) == (task_path, 3)


def test_a_database_down_when_claiming_is_a_server_fault_and_the_retry_runs_the_task(
    stored: CloudTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_tasks_cloud_tasks import store

    def database_down(*args: Any) -> None:
        raise OperationalError("could not connect to server")  # What cannot be staged here.

    document = body(task_id="claimed-while-down")
    with monkeypatch.context() as outage:
        outage.setattr(store, "_claim_ready", database_down)
        failed = deliver(stored.handler_host, document)
    retried = deliver(stored.handler_host, document, retries=1)

    assert failed.status_code == 500
    assert failed.json()["error"] == "django.db.utils.OperationalError"
    assert retried.status_code == 200
    assert side_effects("add") == 1


# --- The dispatch deadline passed: Cloud Tasks hung up ----------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_a_sync_task_whose_client_hung_up_finishes_and_is_not_run_again(
    stored: CloudTasks, server: str, request: pytest.FixtureRequest
) -> None:
    handler_host = on_server(stored, server, request)
    document = body(task_id="hung-up", task_path="tests.tasks.slow", args=[30], takes_context=True)

    deliver_and_hang_up(handler_host, document, started="slow")
    tasks.release_slow.set()
    wait_for_row("hung-up", TaskResultStatus.SUCCESSFUL)
    retried = deliver(handler_host, document, retries=1)

    assert retried.status_code == 200
    assert retried.json()["duplicate"] is True
    assert side_effects("slow") == 1


# --- Cancellation (ASGI): an async task is interrupted ----------------------------------------


def test_an_interrupted_async_task_is_recorded_as_interrupted_and_runs_again(
    stored: CloudTasks, request: pytest.FixtureRequest
) -> None:
    handler_host = on_server(stored, "asgi", request)
    document = body(
        task_id="interrupted",
        task_path="tests.tasks.async_slow_on_first_attempt",
        args=[60],
        takes_context=True,
    )

    deliver_and_hang_up(handler_host, document, started="async_slow_started")
    record = wait_for_row("interrupted", TaskResultStatus.FAILED)

    assert [e["exception_class_path"] for e in record.errors] == [
        "asyncio.exceptions.CancelledError"
    ]
    assert side_effects("async_slow_finished") == 0
    retried = deliver(handler_host, document, retries=1)
    assert retried.status_code == 200
    assert retried.json() == {"status": "success", "task_id": "interrupted"}
    assert side_effects("async_slow_finished") == 1


# --- Duplicate delivery -----------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_a_duplicate_delivery_of_a_task_that_succeeded_is_acknowledged_without_running_it(
    stored: CloudTasks, server: str, request: pytest.FixtureRequest
) -> None:
    handler_host = on_server(stored, server, request)
    document = body(task_id="delivered-twice")

    first, second = deliver(handler_host, document), deliver(handler_host, document, retries=1)

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["duplicate"] is True
    assert side_effects("add") == 1


# --- Bad body, bad token ----------------------------------------------------------------------


def test_a_body_with_nan_is_refused_and_nothing_runs(cloud_tasks: CloudTasks) -> None:
    response = requests.post(
        f"{cloud_tasks.handler_host}/cloudtasks/execute/",
        data=json.dumps(body(args=[float("nan"), 1])),
        timeout=10,
    )

    assert response.status_code == 400
    assert "NaN is not a JSON value" in response.json()["reason"]
    assert recorder.calls == []


@pytest.fixture
def emulator_without_keys(cloud_tasks: CloudTasks, monkeypatch: pytest.MonkeyPatch) -> CloudTasks:
    """A backend whose CLOUD_TASKS_EMULATOR_HOST is an emulator that publishes no keys."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", address)
    cloud_tasks.configure(OIDC_SERVICE_ACCOUNT_EMAIL=tasks_account(), ALLOW_UNAUTHENTICATED=False)
    return cloud_tasks


def tasks_account() -> str:
    from tests.tokens import SERVICE_ACCOUNT

    return SERVICE_ACCOUNT


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 5000],
    ids=["opaque", "three-bad-segments", "alg-none", "long"],
)
def test_a_malformed_token_is_401_whatever_the_state_of_the_keys(
    emulator_without_keys: CloudTasks, token: str
) -> None:
    response = deliver(
        emulator_without_keys.handler_host, body(), headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 401
    assert recorder.calls == []


def test_a_well_formed_token_whose_keys_cannot_be_fetched_is_503(
    emulator_without_keys: CloudTasks,
) -> None:
    token = SigningKey("emulator-key").sign(google_claims(emulator_without_keys.handler_host))

    response = deliver(
        emulator_without_keys.handler_host, body(), headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 503
    assert recorder.calls == []


# --- Django's contract ------------------------------------------------------------------------


def test_get_result_of_a_task_that_is_gone_raises_task_result_does_not_exist(
    stored: CloudTasks,
) -> None:
    TaskRecord.objects.create(
        id="renamed", task_path="tests.tasks.renamed_since", backend="default"
    )

    with pytest.raises(TaskResultDoesNotExist, match="renamed_since"):
        default_task_backend.get_result("renamed")


def test_configuration_errors_are_check_messages_not_tracebacks(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(DISPATCH_DEADLINE=5)

    messages = [m for m in checks.run_checks() if m.id == "django_tasks_cloud_tasks.E002"]

    assert len(messages) == 1
    assert "DISPATCH_DEADLINE" in messages[0].msg
    assert messages[0].hint
