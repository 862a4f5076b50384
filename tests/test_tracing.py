"""A task's trace and logs connect the request that enqueued it to every attempt.

Through the real path: a live server view enqueues, the emulator stores the task and dispatches
it over HTTP to the execute view, which runs it (twice, when the first attempt fails). Spans go to
the OpenTelemetry SDK's in-memory exporter; log records to a handler with the package's filter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from django_tasks_cloud_tasks import tracing
from django_tasks_cloud_tasks.cloud_logging import (
    SPAN_ID,
    TRACE,
    TRACE_SAMPLED,
    CloudLoggingFormatter,
    CloudTraceFilter,
)
from tests.conftest import PROJECT, CloudTasks
from tests.tasks import recorder

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TASK = "logs_and_fails_first_attempt"
TASK_PATH = f"tests.tasks.{TASK}"


# --- parsing the headers ------------------------------------------------------------------------


def test_traceparent_is_read_as_w3c_defines_it() -> None:
    context = tracing.parse_traceparent(TRACEPARENT, "vendor=value")

    assert context == tracing.TraceContext(TRACE_ID, "00f067aa0ba902b7", True, "vendor=value")
    assert context.headers() == {"traceparent": TRACEPARENT, "tracestate": "vendor=value"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param(f"00-{TRACE_ID}-00f067aa0ba902b7", id="no-flags"),
        pytest.param(f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", id="upper-case"),
        pytest.param(f"00-{'0' * 32}-00f067aa0ba902b7-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-span-id"),
        pytest.param(f"ff-{TRACE_ID}-00f067aa0ba902b7-01", id="version-ff"),
        pytest.param(f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra", id="version-00-with-more"),
        pytest.param(f"00-{TRACE_ID}1-00f067aa0ba902b7-01", id="long-trace-id"),
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert tracing.parse_traceparent(value) is None


def test_a_later_traceparent_version_is_read_for_its_known_fields() -> None:
    context = tracing.parse_traceparent(f"01-{TRACE_ID}-00f067aa0ba902b7-03-more")

    assert context == tracing.TraceContext(TRACE_ID, "00f067aa0ba902b7", True)


@pytest.mark.parametrize(
    ("value", "span_id", "sampled"),
    [
        pytest.param(f"{TRACE_ID}/74;o=1", "000000000000004a", True, id="sampled"),
        pytest.param(f"{TRACE_ID}/74;o=0", "000000000000004a", False, id="not-sampled"),
        pytest.param(
            f"{TRACE_ID}/18446744073709551615", "ffffffffffffffff", False, id="no-options"
        ),
    ],
)
def test_cloud_run_trace_header_becomes_a_w3c_context(
    value: str, span_id: str, sampled: bool
) -> None:
    assert tracing.parse_cloud_trace(value) == tracing.TraceContext(TRACE_ID, span_id, sampled)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"{TRACE_ID}", id="no-span"),
        pytest.param(f"{TRACE_ID}/0;o=1", id="zero-span"),
        pytest.param(f"{TRACE_ID}/18446744073709551616;o=1", id="span-over-64-bits"),
        pytest.param(f"{'0' * 32}/74;o=1", id="zero-trace"),
        pytest.param(f"{TRACE_ID}/4a;o=1", id="hex-span"),
    ],
)
def test_an_invalid_cloud_run_trace_header_is_ignored(value: str) -> None:
    assert tracing.parse_cloud_trace(value) is None


def test_traceparent_wins_over_cloud_run_header() -> None:
    meta = {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_X_CLOUD_TRACE_CONTEXT": f"{'1' * 32}/74;o=1"}

    assert tracing.from_meta(meta) == tracing.parse_traceparent(TRACEPARENT)
    assert tracing.from_meta({"HTTP_X_CLOUD_TRACE_CONTEXT": f"{'1' * 32}/74;o=1"}) is not None
    assert tracing.from_meta({"HTTP_TRACEPARENT": "junk"}) is None


# --- fixtures -----------------------------------------------------------------------------------


class Logs(logging.Handler):
    """Collects the records of the task's logger and of this package, through the filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(CloudTraceFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, task_id: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "task_id", None) == task_id]


@pytest.fixture
def logs() -> Iterator[Logs]:
    handler = Logs()
    loggers = [logging.getLogger(name) for name in ("tests.tasks", "django_tasks_cloud_tasks")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


class Capture(SimpleSpanProcessor):
    """Exports only while a test listens, so the rest of the suite leaves no spans behind."""

    listening = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.listening:
            super().on_end(span)


_exporter = InMemorySpanExporter()
_capture = Capture(_exporter)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK, configured once for the process (OpenTelemetry allows one tracer provider)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_capture)
        trace.set_tracer_provider(provider)
    _exporter.clear()
    _capture.listening = True
    yield _exporter
    _capture.listening = False
    _exporter.clear()


def enqueue_through_a_view(
    cloud_tasks: CloudTasks, name: str, body: dict[str, Any], headers: dict[str, str]
) -> list[str]:
    response = requests.post(
        f"{cloud_tasks.handler_host}/enqueue/{name}/", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return list(response.json()["task_ids"])


def of_kind(finished: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in finished if s.kind == kind), key=lambda s: s.start_time or 0)


# --- without an OpenTelemetry SDK: the header travels, the logs connect ------------------------


def test_task_carries_the_enqueuing_requests_trace_to_every_attempt(
    cloud_tasks: CloudTasks, logs: Logs
) -> None:
    (task_id,) = enqueue_through_a_view(
        cloud_tasks, TASK, {"args": ["hello"]}, {"traceparent": TRACEPARENT}
    )

    recorder.wait_for(2)
    assert cloud_tasks.emulator.wait_until_idle()
    # The emulator stored the header as the task set it and sent it with each attempt.
    dispatches = cloud_tasks.emulator.dispatches
    assert [(d.status, d.headers["traceparent"]) for d in dispatches] == [
        (500, TRACEPARENT),
        (200, TRACEPARENT),
    ]
    task_lines = [r for r in logs.about(task_id) if r.name == "tests.tasks"]
    assert [r.getMessage() for r in task_lines] == ["hello (attempt 1)", "hello (attempt 2)"]
    for number, record in enumerate(task_lines, start=1):
        expected = {
            "task_id": task_id,
            "task_path": TASK_PATH,
            "queue_name": "default",
            "attempt": number,
            "backend": "default",
            TRACE: f"projects/{PROJECT}/traces/{TRACE_ID}",
            SPAN_ID: "00f067aa0ba902b7",
            TRACE_SAMPLED: True,
        }
        assert vars(record).items() >= expected.items()


def test_cloud_run_trace_header_travels_as_traceparent(cloud_tasks: CloudTasks, logs: Logs) -> None:
    enqueue_through_a_view(
        cloud_tasks, "describe", {"args": ["x"]}, {"X-Cloud-Trace-Context": f"{TRACE_ID}/74;o=1"}
    )

    recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    (dispatch,) = cloud_tasks.emulator.dispatches
    assert dispatch.headers["traceparent"] == f"00-{TRACE_ID}-000000000000004a-01"


def test_task_enqueued_outside_a_request_carries_no_trace_header(cloud_tasks: CloudTasks) -> None:
    from tests import tasks

    tasks.add.enqueue(1, 2)

    recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    (dispatch,) = cloud_tasks.emulator.dispatches
    assert "traceparent" not in dispatch.headers


def test_a_failed_attempts_own_log_line_carries_the_task_and_trace_fields(
    cloud_tasks: CloudTasks, logs: Logs
) -> None:
    (task_id,) = enqueue_through_a_view(
        cloud_tasks, TASK, {"args": ["hello"]}, {"traceparent": TRACEPARENT}
    )

    recorder.wait_for(2)
    assert cloud_tasks.emulator.wait_until_idle()
    (failure,) = [r for r in logs.about(task_id) if r.name == "django_tasks_cloud_tasks.execution"]
    assert failure.levelno == logging.WARNING
    assert (failure.attempt, getattr(failure, TRACE)) == (  # type: ignore[attr-defined]
        1,
        f"projects/{PROJECT}/traces/{TRACE_ID}",
    )


def test_logs_of_an_async_task_under_asgi_carry_the_fields(
    cloud_tasks: CloudTasks, asgi_server: tuple[str, str], logs: Logs
) -> None:
    cloud_tasks.handler_host = asgi_server[0]
    cloud_tasks.configure()

    (task_id,) = enqueue_through_a_view(
        cloud_tasks, "async_logs", {"args": ["from async"]}, {"traceparent": TRACEPARENT}
    )

    recorder.wait_for(1)
    assert cloud_tasks.emulator.wait_until_idle()
    (record,) = [r for r in logs.about(task_id) if r.name == "tests.tasks"]
    assert (record.getMessage(), record.attempt, getattr(record, SPAN_ID)) == (  # type: ignore[attr-defined]
        "from async (async)",
        1,
        "00f067aa0ba902b7",
    )


def test_json_formatter_writes_what_cloud_run_reads(cloud_tasks: CloudTasks, logs: Logs) -> None:
    (task_id,) = enqueue_through_a_view(
        cloud_tasks, TASK, {"args": ["json"]}, {"traceparent": TRACEPARENT}
    )
    recorder.wait_for(2)
    assert cloud_tasks.emulator.wait_until_idle()
    failure = next(r for r in logs.about(task_id) if r.levelno == logging.WARNING)

    entry = json.loads(CloudLoggingFormatter().format(failure))

    assert entry["severity"] == "WARNING"
    assert entry["message"].startswith(f"Task {TASK_PATH} ({task_id}), attempt 1, failed")
    assert "RuntimeError: the first attempt always fails" in entry["message"]
    assert entry[TRACE] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert (entry[SPAN_ID], entry[TRACE_SAMPLED]) == ("00f067aa0ba902b7", True)
    assert (entry["task_id"], entry["attempt"], entry["queue_name"]) == (task_id, 1, "default")


def test_records_outside_a_task_and_a_trace_get_no_fields() -> None:
    record = logging.makeLogRecord({"msg": "plain"})

    assert CloudTraceFilter(project="p").filter(record)
    assert not hasattr(record, "task_id")
    assert not hasattr(record, SPAN_ID)


# --- with the SDK: one trace, from the enqueuing request to the last attempt --------------------


def test_one_trace_from_the_enqueuing_request_through_each_attempt(
    cloud_tasks: CloudTasks, spans: InMemorySpanExporter, logs: Logs
) -> None:
    cloud_tasks.settings.TRACE_SERVER_SPANS = True
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("client") as client:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        (task_id,) = enqueue_through_a_view(cloud_tasks, TASK, {"args": ["traced"]}, headers)

    recorder.wait_for(2)
    assert cloud_tasks.emulator.wait_until_idle()
    finished = spans.get_finished_spans()
    trace_id = client.get_span_context().trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}
    enqueuing, *dispatches = of_kind(finished, SpanKind.SERVER)
    (producer,) = of_kind(finished, SpanKind.PRODUCER)
    consumers = of_kind(finished, SpanKind.CONSUMER)
    assert enqueuing.name == f"POST /enqueue/{TASK}/"
    assert producer.name == "send default"
    assert producer.parent is not None
    assert producer.parent.span_id == enqueuing.context.span_id
    assert dict(producer.attributes or {}) == {
        "messaging.system": "gcp_cloud_tasks",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": task_id,
    }
    # Each attempt: the dispatch request's server span, a child of the producer through the
    # traceparent header; the task's consumer span inside it, linked to the producer.
    assert len(dispatches) == len(consumers) == 2
    for number, (dispatch, consumer) in enumerate(zip(dispatches, consumers, strict=True), 1):
        assert dispatch.parent is not None
        assert dispatch.parent.span_id == producer.context.span_id
        assert consumer.parent is not None
        assert consumer.parent.span_id == dispatch.context.span_id
        assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
        assert consumer.name == "process default"
        assert (
            dict(consumer.attributes or {}).items()
            >= {
                "messaging.system": "gcp_cloud_tasks",
                "messaging.operation.type": "process",
                "messaging.destination.name": "default",
                "messaging.message.id": task_id,
                tracing.ATTEMPT_ATTRIBUTE: number,
                tracing.TASK_PATH_ATTRIBUTE: TASK_PATH,
            }.items()
        )
    first, second = consumers
    assert first.status.status_code == StatusCode.ERROR
    assert (first.attributes or {})["error.type"] == "builtins.RuntimeError"
    assert [event.name for event in first.events] == ["exception"]
    assert second.status.status_code == StatusCode.UNSET
    assert not second.events
    # The task's log lines name the consumer span of their attempt.
    task_lines = [r for r in logs.about(task_id) if r.name == "tests.tasks"]
    assert [getattr(r, SPAN_ID) for r in task_lines] == [
        f"{c.context.span_id:016x}" for c in consumers
    ]
    assert {getattr(r, TRACE) for r in task_lines} == {f"projects/{PROJECT}/traces/{trace_id:032x}"}


def test_without_a_server_span_the_consumer_is_a_child_of_the_producer(
    cloud_tasks: CloudTasks, spans: InMemorySpanExporter
) -> None:
    cloud_tasks.settings.TRACE_SERVER_SPANS = False
    with trace.get_tracer("tests").start_as_current_span("enqueuing"):
        from tests import tasks

        tasks.fails_first_attempt.enqueue()

    recorder.wait_for(2)
    assert cloud_tasks.emulator.wait_until_idle()
    finished = spans.get_finished_spans()
    (producer,) = of_kind(finished, SpanKind.PRODUCER)
    consumers = of_kind(finished, SpanKind.CONSUMER)
    assert len(consumers) == 2
    for consumer in consumers:
        assert consumer.parent is not None
        assert consumer.parent.span_id == producer.context.span_id
        assert consumer.parent.is_remote
        assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


def test_bulk_enqueue_makes_one_producer_span_per_batch(
    cloud_tasks: CloudTasks, spans: InMemorySpanExporter
) -> None:
    cloud_tasks.settings.TRACE_SERVER_SPANS = False
    from django_tasks_cloud_tasks import Call, enqueue_many
    from tests import tasks

    with trace.get_tracer("tests").start_as_current_span("bulk"):
        results = enqueue_many(tasks.describe, [Call(str(n)) for n in range(101)])

    recorder.wait_for(101, timeout=60)
    assert cloud_tasks.emulator.wait_until_idle(timeout=60)
    finished = spans.get_finished_spans()
    producers = of_kind(finished, SpanKind.PRODUCER)
    assert [(p.attributes or {})["messaging.batch.message_count"] for p in producers] == [100, 1]
    assert all("messaging.message.id" not in (p.attributes or {}) for p in producers)
    batch_of = {
        (c.attributes or {})["messaging.message.id"]: c.links[0].context.span_id
        for c in of_kind(finished, SpanKind.CONSUMER)
    }
    first, second = (p.context.span_id for p in producers)
    assert batch_of == {r.id: first for r in results[:100]} | {results[100].id: second}


def test_a_failed_enqueue_is_recorded_on_the_producer_span(
    cloud_tasks: CloudTasks, spans: InMemorySpanExporter
) -> None:
    from django_tasks_cloud_tasks import CloudTasksError
    from tests import tasks

    cloud_tasks.emulator.inject_fault("CreateTask", status="PERMISSION_DENIED")
    with pytest.raises(CloudTasksError):
        tasks.add.enqueue(1, 2)

    (producer,) = of_kind(spans.get_finished_spans(), SpanKind.PRODUCER)
    assert producer.status.status_code == StatusCode.ERROR
    assert [event.name for event in producer.events] == ["exception"]


# --- without opentelemetry-api installed --------------------------------------------------------

WITHOUT_OPENTELEMETRY = """
import json, logging, os, sys
sys.modules["opentelemetry"] = None  # As if opentelemetry-api were not installed.

import django
from django.conf import settings
from django.test import Client, RequestFactory
from google.cloud import tasks_v2

from django_tasks_cloud_tasks.emulator import Emulator

with Emulator(host="127.0.0.1", port=0, project="p", location="l", queues=("default",)) as em:
    os.environ["CLOUD_TASKS_EMULATOR_HOST"] = em.address
    settings.configure(
        DEBUG=True,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="django_tasks_cloud_tasks.urls",
        INSTALLED_APPS=["django_tasks_cloud_tasks"],
        TASKS={"default": {
            "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
            "QUEUES": [],
            "OPTIONS": {
                "CLOUD_TASKS_PROJECT": "p",
                "CLOUD_TASKS_LOCATION": "l",
                "TASK_HANDLER_HOST": "http://127.0.0.1:9",
                "TASK_HANDLER_PATH": "/execute/",
            },
        }},
    )
    django.setup()
    from django_tasks_cloud_tasks import client, tracing
    from django_tasks_cloud_tasks.cloud_logging import CloudTraceFilter
    from tests.tasks import logs_and_fails_first_attempt

    assert tracing.trace is None, "opentelemetry was imported"
    queue = "projects/p/locations/l/queues/default"
    cloud = client.sync_client(em.address)
    cloud.pause_queue(name=queue)

    def view(request):
        logs_and_fails_first_attempt.enqueue("untraced")

    request = RequestFactory().post("/", HTTP_TRACEPARENT=sys.argv[1])
    tracing.TraceContextMiddleware(view)(request)
    full = tasks_v2.Task.View.FULL
    (stored,) = cloud.list_tasks(request={"parent": queue, "response_view": full})
    headers = dict(stored.http_request.headers)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(CloudTraceFilter())
    logging.getLogger("tests.tasks").addHandler(handler)
    logging.getLogger("tests.tasks").setLevel(logging.INFO)
    response = Client().post(
        "/execute/",
        stored.http_request.body,
        content_type="application/json",
        HTTP_TRACEPARENT=headers["traceparent"],
    )
    (record,) = records
    print(json.dumps({
        "traceparent": headers["traceparent"],
        "status": response.status_code,
        "fields": {k: v for k, v in vars(record).items() if k.startswith("logging.")},
        "attempt": record.attempt,
    }))
"""


def last_json_line(code: str, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter, in this repository; its last output line, as JSON."""
    output = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert output.returncode == 0, output.stderr
    return json.loads(output.stdout.strip().splitlines()[-1])


def test_without_opentelemetry_the_header_travels_and_logs_connect() -> None:
    outcome = last_json_line(WITHOUT_OPENTELEMETRY, TRACEPARENT)
    assert outcome == {
        "traceparent": TRACEPARENT,
        "status": 500,  # The task's first attempt fails on purpose.
        "fields": {
            TRACE: f"projects/p/traces/{TRACE_ID}",
            SPAN_ID: "00f067aa0ba902b7",
            TRACE_SAMPLED: True,
        },
        "attempt": 1,
    }


DOCUMENTED_LOGGING = """
import json, logging, re, sys
from pathlib import Path

import django
from django.conf import settings
from django.test import RequestFactory

page = Path("docs/observability.md").read_text()
(snippet,) = [b for b in re.findall(r"```python\\n(.*?)```", page, re.S) if "LOGGING = {" in b]
namespace = {}
exec(snippet, namespace)
settings.configure(
    LOGGING=namespace["LOGGING"],
    TASKS={"default": {
        "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
        "QUEUES": [],
        "OPTIONS": {
            "CLOUD_TASKS_PROJECT": "documented-project",
            "CLOUD_TASKS_LOCATION": "l",
            "TASK_HANDLER_HOST": "http://127.0.0.1:9",
        },
    }},
)
django.setup()  # Configures logging from LOGGING, as Django does.
from django_tasks_cloud_tasks.tracing import TraceContextMiddleware

def view(request):
    logging.getLogger("myapp").warning("inside a request", extra={"order": 42})

TraceContextMiddleware(view)(RequestFactory().get("/", HTTP_TRACEPARENT=sys.argv[1]))
"""


def test_documented_logging_setup_writes_cloud_logging_json() -> None:
    entry = last_json_line(DOCUMENTED_LOGGING, TRACEPARENT)
    assert (
        entry.items()
        >= {
            "severity": "WARNING",
            "message": "inside a request",
            "logger": "myapp",
            "order": 42,
            TRACE: f"projects/documented-project/traces/{TRACE_ID}",
            SPAN_ID: "00f067aa0ba902b7",
            TRACE_SAMPLED: True,
        }.items()
    )


def test_a_refusal_line_carries_the_task_and_trace_fields(
    cloud_tasks: CloudTasks, logs: Logs
) -> None:
    body = {
        "task_id": "refused-task",
        "task_path": "tests.tasks.not_a_task",
        "args": [],
        "kwargs": {},
        "queue_name": "default",
        "backend": "default",
        "priority": 0,
        "takes_context": False,
        "enqueued_at": "2026-01-01T00:00:00+00:00",
    }

    response = requests.post(
        f"{cloud_tasks.handler_host}/cloudtasks/execute/",
        json=body,
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    )

    assert response.status_code == 404
    (line,) = logs.about("refused-task")
    assert line.getMessage().startswith("Refused a task request (404)")
    assert (line.task_path, getattr(line, TRACE)) == (  # type: ignore[attr-defined]
        "tests.tasks.not_a_task",
        f"projects/{PROJECT}/traces/{TRACE_ID}",
    )


async def test_async_enqueue_and_async_task_make_one_trace_under_asgi(
    cloud_tasks: CloudTasks, asgi_server: tuple[str, str], spans: InMemorySpanExporter
) -> None:
    from asgiref.sync import sync_to_async

    from tests import tasks

    cloud_tasks.settings.TRACE_SERVER_SPANS = True
    cloud_tasks.handler_host = asgi_server[0]
    cloud_tasks.configure()
    with trace.get_tracer("tests").start_as_current_span("enqueuing") as enqueuing:
        result = await tasks.async_logs.aenqueue("traced")

    await sync_to_async(recorder.wait_for)(1)
    assert await sync_to_async(cloud_tasks.emulator.wait_until_idle)()
    finished = spans.get_finished_spans()
    (producer,) = of_kind(finished, SpanKind.PRODUCER)
    (server,) = of_kind(finished, SpanKind.SERVER)
    (consumer,) = of_kind(finished, SpanKind.CONSUMER)
    assert {s.context.trace_id for s in finished} == {enqueuing.get_span_context().trace_id}
    assert producer.parent is not None
    assert producer.parent.span_id == enqueuing.get_span_context().span_id
    assert server.parent is not None
    assert server.parent.span_id == producer.context.span_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == server.context.span_id
    assert (consumer.attributes or {})["messaging.message.id"] == result.id
