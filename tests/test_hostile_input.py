"""Thousands of generated requests: no 5xx, no crash, nothing run that is not a Task."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_tasks_cloud_tasks import oidc
from tests.conftest import backend_settings
from tests.tasks import recorder
from tests.tokens import SERVICE_ACCOUNT, CertificateServer, SigningKey

TASK_PATHS = [
    "tests.tasks.accepts_anything",
    "tests.tasks.not_a_task",
    "tests.tasks.NOT_A_TASK_EITHER",
    "tests.tasks.recorder",
    "tests.tasks",
    "tests.no_such_module.thing",
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "antigravity.fly",
    "this.s",
    "django_tasks_cloud_tasks.views.execute",
]
FIELDS = [
    "task_id",
    "task_path",
    "args",
    "kwargs",
    "queue_name",
    "backend",
    "priority",
    "takes_context",
    "enqueued_at",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
plausible_fields = {
    "task_id": st.text(max_size=40) | st.just("abc-123") | json_values,
    "task_path": st.sampled_from(TASK_PATHS) | st.text(max_size=60) | json_values,
    "args": st.lists(json_values, max_size=4) | json_values,
    "kwargs": st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values,
    "queue_name": st.sampled_from(["default", "other", ""]) | json_values,
    "backend": st.sampled_from(["default", "guarded", "nope"]) | json_values,
    "priority": st.integers(-200, 200) | json_values,
    "takes_context": st.booleans() | json_values,
    "enqueued_at": st.sampled_from(["2024-01-01T00:00:00+00:00", "yesterday"]) | json_values,
}
documents = st.fixed_dictionaries({}, optional=plausible_fields).map(
    lambda d: json.dumps(d).encode()
)
bodies = documents | st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
headers = st.fixed_dictionaries(
    {},
    optional={
        "HTTP_X_CLOUDTASKS_TASKRETRYCOUNT": header_text | st.sampled_from(["0", "3"]),
        "HTTP_X_CLOUDTASKS_TASKNAME": header_text,
        "HTTP_AUTHORIZATION": header_text | header_text.map(lambda t: f"Bearer {t}"),
        "CONTENT_TYPE": st.sampled_from(["application/json", "text/plain", "", "multipart/x"]),
    },
)


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("django.request") and record.exc_info:
            self.records.append(record)


@pytest.fixture
def view_client(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The view with an open backend and one that requires tokens (from a local "Google")."""
    monkeypatch.delenv("CLOUD_TASKS_EMULATOR_HOST", raising=False)
    google = CertificateServer(SigningKey("fuzz-key"))
    monkeypatch.setattr(oidc, "GOOGLE_CERTS_URL", google.url)
    settings.TASKS = {
        "default": backend_settings("http://testserver", ALLOW_UNAUTHENTICATED=True),
        "guarded": backend_settings(
            "http://testserver", OIDC_SERVICE_ACCOUNT_EMAIL=SERVICE_ACCOUNT
        ),
    }
    recorder.clear()
    counter = _ErrorCounter()
    logging.getLogger("django.request").addHandler(counter)
    imported_before = set(sys.modules)
    yield Client(raise_request_exception=False), counter
    logging.getLogger("django.request").removeHandler(counter)
    google.close()
    assert not {"antigravity", "this"} & (set(sys.modules) - imported_before)


@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, extra=headers)
def test_generated_requests_never_crash_or_run_a_non_task(
    view_client: Any, body: bytes, extra: dict[str, str]
) -> None:
    client, errors = view_client
    content_type = extra.pop("CONTENT_TYPE", "application/json")
    calls_before = len(recorder.calls)

    response = client.post("/cloudtasks/execute/", body, content_type=content_type, **extra)

    assert response.status_code < 500, response.content
    assert errors.records == []
    new_calls = recorder.calls[calls_before:]
    if response.status_code == 200:
        assert [call.name for call in new_calls] == ["accepts_anything"]
    else:
        assert new_calls == []
