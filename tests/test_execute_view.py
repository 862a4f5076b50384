"""The execute view over real HTTP: what it answers, and that bad requests run nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.conftest import CloudTasks
from tests.tasks import recorder


def body(**overrides: Any) -> dict[str, Any]:
    document = {
        "task_id": "test-task-001",
        "task_path": "tests.tasks.add",
        "args": [5, 3],
        "kwargs": {},
        "queue_name": "default",
        "backend": "default",
        "priority": 0,
        "takes_context": False,
        "enqueued_at": "2024-01-01T00:00:00+00:00",
    }
    document.update(overrides)
    return document


def post(cloud_tasks: CloudTasks, data: Any, **kwargs: Any) -> requests.Response:
    url = f"{cloud_tasks.handler_host}/cloudtasks/execute/"
    if not isinstance(data, bytes | str):
        data = json.dumps(data)
    return requests.post(url, data=data, timeout=10, **kwargs)


def test_a_hand_written_post_runs_the_task(cloud_tasks: CloudTasks) -> None:
    response = post(cloud_tasks, body(), headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    assert response.json() == {"status": "success", "task_id": "test-task-001"}
    assert [c.args for c in recorder.calls] == [(5, 3)]


def test_a_task_that_raises_answers_500_with_the_error(cloud_tasks: CloudTasks) -> None:
    response = post(cloud_tasks, body(task_path="tests.tasks.always_fails", args=[]))

    assert response.status_code == 500
    assert response.json() == {
        "status": "error",
        "task_id": "test-task-001",
        "error": "ValueError",
    }


def test_the_error_message_is_answered_only_when_an_option_asks(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.configure(RESPONSE_ERROR_MESSAGES=True)

    response = post(cloud_tasks, body(task_path="tests.tasks.always_fails", args=[]))

    assert response.status_code == 500
    assert response.json()["error"] == "ValueError: this task always fails"


def test_attempt_comes_from_the_retry_count_header(cloud_tasks: CloudTasks) -> None:
    document = body(task_path="tests.tasks.describe", args=["x"], takes_context=True)

    response = post(cloud_tasks, document, headers={"X-CloudTasks-TaskRetryCount": "4"})

    assert response.status_code == 200
    assert recorder.calls[0].attempt == 5


def test_takes_context_comes_from_the_task_not_the_body(cloud_tasks: CloudTasks) -> None:
    response = post(cloud_tasks, body(task_path="tests.tasks.describe", args=["x"]))

    assert response.status_code == 200
    assert recorder.calls[0].attempt == 1


BAD_BODIES = [
    pytest.param(b"{not json", "not valid JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "JSON object", id="array"),
    pytest.param(b"[" * 100_000, "not valid JSON", id="deeply-nested"),
    pytest.param(b'{"task_id": NaN}', "NaN is not a JSON value", id="nan-literal"),
    pytest.param(
        json.dumps(body(args=[float("inf"), 1])), "Infinity is not", id="infinity-literal"
    ),
    pytest.param(json.dumps(body(task_path=None)), "'task_path'", id="missing-path"),
    pytest.param(json.dumps(body(task_id=None)), "'task_id'", id="missing-id"),
    pytest.param(json.dumps(body(task_id="a b")), "'task_id'", id="bad-id"),
    pytest.param(json.dumps(body(task_path="add")), "'task_path'", id="undotted-path"),
    pytest.param(json.dumps(body(args={"a": 1})), "'args' must be a list", id="args-object"),
    pytest.param(json.dumps(body(kwargs=[1])), "'kwargs' must be an object", id="kwargs-list"),
    pytest.param(json.dumps(body(kwargs={"not valid": 1})), "identifiers", id="kwargs-key"),
    pytest.param(json.dumps(body(priority="high")), "'priority'", id="priority-string"),
    pytest.param(json.dumps(body(priority=1000)), "'priority'", id="priority-range"),
    pytest.param(json.dumps(body(priority=True)), "'priority'", id="priority-bool"),
    pytest.param(json.dumps(body(takes_context="yes")), "'takes_context'", id="context-str"),
    pytest.param(json.dumps(body(enqueued_at="yesterday")), "'enqueued_at'", id="bad-date"),
    pytest.param(json.dumps(body(backend="elsewhere")), "'elsewhere'", id="unknown-backend"),
    pytest.param(json.dumps(body(args=[1])), "missing a required argument", id="too-few-args"),
    pytest.param(json.dumps(body(kwargs={"c": 1})), "unexpected keyword", id="unknown-kwarg"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_BODIES)
def test_bad_bodies_get_400_with_a_reason_and_run_nothing(
    cloud_tasks: CloudTasks, data: bytes | str, reason: str
) -> None:
    response = post(cloud_tasks, data)

    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert recorder.calls == []


@pytest.mark.parametrize(
    "task_path",
    [
        "tests.tasks.not_a_task",
        "tests.tasks.NOT_A_TASK_EITHER",
        "tests.tasks.missing",
        "tests.no_such_module.add",
        "os.system",
        "subprocess.run",
        "antigravity.fly",
    ],
)
def test_a_path_that_is_not_a_task_gets_404_and_nothing_is_called(
    cloud_tasks: CloudTasks, task_path: str
) -> None:
    import sys

    imported_before = "antigravity" in sys.modules

    response = post(cloud_tasks, body(task_path=task_path, args=[]))

    assert response.status_code == 404
    assert "is not a django.tasks.Task" in response.json()["reason"]
    assert recorder.calls == []
    assert ("antigravity" in sys.modules) == imported_before


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405(cloud_tasks: CloudTasks, method: str) -> None:
    response = requests.request(
        method, f"{cloud_tasks.handler_host}/cloudtasks/execute/", timeout=10
    )

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert "POST" in response.json()["reason"]
    assert recorder.calls == []


def test_a_body_over_the_task_size_limit_gets_413(cloud_tasks: CloudTasks) -> None:
    response = post(cloud_tasks, body(args=["x" * (1024 * 1024 + 1), 1]))

    assert response.status_code == 413
    assert recorder.calls == []


@pytest.mark.parametrize("value", ["-1", "two", "1e3", "99999999999"])
def test_a_bad_retry_count_header_gets_400(cloud_tasks: CloudTasks, value: str) -> None:
    response = post(cloud_tasks, body(), headers={"X-CloudTasks-TaskRetryCount": value})

    assert response.status_code == 400
    assert "X-CloudTasks-TaskRetryCount" in response.json()["reason"]
    assert recorder.calls == []


def test_a_queue_not_allowed_by_the_backend_gets_400(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.settings.TASKS = {
        "default": {**cloud_tasks.settings.TASKS["default"], "QUEUES": ["default"]}
    }

    response = post(cloud_tasks, body(queue_name="other"))

    assert response.status_code == 400
    assert "Queue 'other' is not valid" in response.json()["reason"]
    assert recorder.calls == []


def test_a_settings_change_applies_to_tasks_delivered_before_it(cloud_tasks: CloudTasks) -> None:
    assert post(cloud_tasks, body(queue_name="other")).status_code == 200
    cloud_tasks.settings.TASKS = {
        "default": {**cloud_tasks.settings.TASKS["default"], "QUEUES": ["default"]}
    }

    response = post(cloud_tasks, body(queue_name="other"))

    assert response.status_code == 400
    assert "Queue 'other' is not valid" in response.json()["reason"]
    assert [c.args for c in recorder.calls] == [(5, 3)]


def test_each_call_is_checked_against_the_signature_whatever_came_before(
    cloud_tasks: CloudTasks,
) -> None:
    calls = [
        ([5, 3], {}, 200),
        ([1], {}, 400),
        ([7], {"b": 8}, 200),
        ([7], {"c": 8}, 400),
        ([2, 2], {}, 200),
        ([1], {}, 400),
    ]

    statuses = [post(cloud_tasks, body(args=a, kwargs=k)).status_code for a, k, _ in calls]

    assert statuses == [status for _, _, status in calls]
    assert [c.args for c in recorder.calls] == [(5, 3), (7, 8), (2, 2)]


def test_a_backend_of_another_type_gets_400(cloud_tasks: CloudTasks) -> None:
    cloud_tasks.settings.TASKS = {
        **cloud_tasks.settings.TASKS,
        "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
    }

    response = post(cloud_tasks, body(backend="immediate"))

    assert response.status_code == 400
    assert recorder.calls == []


def test_first_deliveries_racing_the_import_of_a_task_module_all_run(
    cloud_tasks: CloudTasks,
) -> None:
    import sys
    from concurrent.futures import ThreadPoolExecutor

    assert "tests.slow_import_tasks" not in sys.modules
    document = body(task_path="tests.slow_import_tasks.imported_slowly", args=[1])

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: post(cloud_tasks, document).status_code, range(4)))

    assert statuses == [200] * 4
    assert len(recorder.named("imported_slowly")) == 4
