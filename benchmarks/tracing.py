"""What tracing costs per task: enqueue and the execute view, in microseconds per call.

    python -m benchmarks.tracing MODE COUNT     # prints {"enqueue": µs, "execute": µs}

MODE is ``absent`` (``opentelemetry`` blocked, as if ``opentelemetry-api`` were not installed),
``api`` (the API without an SDK: what every user of google-api-core has) or ``sdk`` (the SDK with a
span processor whose exporter drops every span: the cost of making the spans, not of sending them).
Each call runs as in production, with a ``traceparent`` to carry: an enqueue inside a request
whose trace context the middleware took, and an execute view call with the header Cloud Tasks
sends. The view is called directly (``RequestFactory``), without a server, so that nothing dilutes
the difference. ``run.py`` starts each mode in a process of its own, in rotation.

Needs ``CLOUD_TASKS_EMULATOR_HOST`` (an emulator with the benchmark's queue paused) and
``DJANGO_SETTINGS_MODULE=benchmarks.settings``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROUNDS = 5


def configure(mode: str) -> None:
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    elif mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Dropped(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Dropped()))
        trace.set_tracer_provider(provider)
    elif mode != "api":
        raise SystemExit(f"unknown mode {mode!r}: absent, api or sdk")


def microseconds(count: int, make: Callable[[], Any], call: Callable[[Any], Any]) -> float:
    """Median over ROUNDS of the mean time per call, in microseconds; the arguments are made
    before the clock starts."""
    samples = []
    for _ in range(ROUNDS):
        arguments = [make() for _ in range(count)]
        started = time.perf_counter()
        for argument in arguments:
            call(argument)
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def main() -> None:
    mode, count = sys.argv[1], int(sys.argv[2])
    configure(mode)
    import django

    django.setup()
    from django.test import RequestFactory

    from benchmarks.tasks import noop
    from django_tasks_cloud_tasks import tracing
    from django_tasks_cloud_tasks.views import execute

    assert (tracing.trace is None) == (mode == "absent")
    factory = RequestFactory()

    @tracing.traced_request
    def enqueue(request: Any) -> None:
        noop.enqueue(1, 2, message="hello")

    def enqueuing() -> Any:
        return factory.post("/", HTTP_TRACEPARENT=TRACEPARENT)

    def delivery() -> Any:
        body = json.dumps(
            {
                "task_id": str(uuid.uuid4()),
                "task_path": "benchmarks.tasks.noop",
                "args": [1, 2],
                "kwargs": {"message": "hello"},
                "queue_name": "default",
                "backend": "default",
                "priority": 0,
                "takes_context": False,
                "enqueued_at": "2026-01-01T00:00:00+00:00",
            }
        )
        return factory.post(
            "/cloudtasks/execute/",
            body,
            content_type="application/json",
            HTTP_TRACEPARENT=TRACEPARENT,
            HTTP_X_CLOUDTASKS_TASKRETRYCOUNT="0",
        )

    def deliver(request: Any) -> None:
        response = execute(request)
        assert response.status_code == 200, response.content

    for _ in range(50):  # Warm up: clients, caches, imports.
        enqueue(enqueuing())
        deliver(delivery())
    figures = {
        "enqueue": microseconds(count, enqueuing, enqueue),
        "execute": microseconds(count * 4, delivery, deliver),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
