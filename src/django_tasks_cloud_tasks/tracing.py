"""Trace context that travels with a task, and the optional OpenTelemetry spans around it.

Decision: the task carries the W3C trace context (``traceparent``, and ``tracestate`` if any) in the
Cloud Task's HTTP headers, where Cloud Tasks keeps what the task sets and sends it with every
attempt. We write and read W3C ourselves rather than through OpenTelemetry's configured
propagators: both ends are this package, the header then travels without OpenTelemetry, and the
execute view can read it without it (baggage does not travel).

What goes in the headers, in this order:

1. With an OpenTelemetry SDK configured, the PRODUCER span that ``producing`` opens around the
   CreateTask (or BatchCreateTasks) call: its context is the task's creation context.
2. With ``opentelemetry-api`` but no SDK, the current span's context if one is valid (say, a
   server instrumentation extracted the request's), and no span of ours.
3. Otherwise the trace of the request (or task) this code runs for: ``traced_request`` reads the
   request's ``traceparent``, or Cloud Run's ``X-Cloud-Trace-Context``, into a context variable.
   ``TraceContextMiddleware`` does it for every request, the execute view and the schedule
   endpoint for their own; that is one dictionary lookup per request, and no header at all is the
   cost of leaving it out.

On the execute side, ``consuming`` sets the task's log fields (``cloud_logging``) for the time it
runs and, with an SDK, opens a CONSUMER span: a child of the server span a server instrumentation
opened for the dispatch request (itself a child of the creation context, through ``traceparent``),
or of the creation context when there is none, and linked to the creation context either way.

OpenTelemetry is imported once, here, and only if it is installed (the ``otel`` extra); without an
SDK, ``_recording`` is a check of the global tracer provider and no span is made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from asgiref.sync import markcoroutinefunction

try:
    from opentelemetry import trace
except ImportError:  # The otel extra is not installed: the header still travels.
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase
    from django.tasks import TaskResult

    from .execution import Outcome

__all__ = ["TraceContextMiddleware"]

SYSTEM = "gcp_cloud_tasks"  # No well-known value exists for Cloud Tasks; after gcp_pubsub.
ATTEMPT_ATTRIBUTE = f"messaging.{SYSTEM}.message.delivery_count"  # After servicebus' attribute.
TASK_PATH_ATTRIBUTE = f"messaging.{SYSTEM}.task_path"

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})/([0-9]{1,20})(?:;o=([0-9]+))?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: ids in lower-case hex, and whether the trace is sampled."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the parent's span id in a traceparent
    sampled: bool
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def headers(self) -> dict[str, str]:
        if self.tracestate:
            return {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {"traceparent": self.traceparent}


def parse_traceparent(value: str, tracestate: str = "") -> TraceContext | None:
    """A ``traceparent`` header's context; None if it is not a valid one (W3C says to ignore it)."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1), tracestate.strip())


def parse_cloud_trace(value: str) -> TraceContext | None:
    """Cloud Run's ``X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1``; its span id is decimal."""
    match = _CLOUD_TRACE.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span, options = match.groups()
    span_number = int(span)
    if trace_id == _ZERO_TRACE or not 0 < span_number < 2**64:
        return None
    return TraceContext(trace_id.lower(), f"{span_number:016x}", options == "1")


def from_meta(meta: Mapping[str, Any]) -> TraceContext | None:
    """The trace context of a request, from its WSGI/ASGI ``META``: ``traceparent`` first."""
    traceparent = meta.get("HTTP_TRACEPARENT")
    if traceparent is not None:
        context = parse_traceparent(traceparent, meta.get("HTTP_TRACESTATE", ""))
        if context is not None:
            return context
    cloud_trace = meta.get("HTTP_X_CLOUD_TRACE_CONTEXT")
    return parse_cloud_trace(cloud_trace) if cloud_trace is not None else None


# --- the request (or task) this code runs for ---------------------------------------------------

_request_trace: ContextVar[TraceContext | None] = ContextVar("cloud_tasks_trace", default=None)
# The running task's log fields (execution.log_fields), for cloud_logging.
_task_fields: ContextVar[dict[str, Any] | None] = ContextVar("cloud_tasks_task", default=None)


def traced_request[V: Callable[..., Any]](view: V) -> V:
    """Run ``view`` (sync or async) with its request's trace context as the current one."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def awrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            token = _request_trace.set(from_meta(request.META))
            try:
                return await view(request, *args, **kwargs)
            finally:
                _request_trace.reset(token)

        return awrapped  # type: ignore[return-value]

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        token = _request_trace.set(from_meta(request.META))
        try:
            return view(request, *args, **kwargs)
        finally:
            _request_trace.reset(token)

    return wrapped  # type: ignore[return-value]


class TraceContextMiddleware:
    """Makes each request's trace context the one that tasks enqueued while it runs carry.

    Only needed without OpenTelemetry (whose server instrumentation does the same): add
    ``"django_tasks_cloud_tasks.tracing.TraceContextMiddleware"`` to ``MIDDLEWARE``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self._handle = traced_request(get_response)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self._handle(request)  # type: ignore[no-any-return]  # Awaitable when async.


def current() -> TraceContext | None:
    """The trace context here: OpenTelemetry's current span if valid, else the request's."""
    if trace is not None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return _from_span_context(span_context)
    return _request_trace.get()


def task_fields() -> dict[str, Any] | None:
    """The log fields of the task running here, if one is."""
    return _task_fields.get()


# --- OpenTelemetry ------------------------------------------------------------------------------


def _recording() -> bool:
    """Whether an OpenTelemetry SDK (or any tracer provider) is configured to make spans."""
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


def _tracer() -> Any:
    from . import __version__

    return trace.get_tracer("django_tasks_cloud_tasks", __version__)


def _from_span_context(span_context: Any) -> TraceContext:
    return TraceContext(
        f"{span_context.trace_id:032x}",
        f"{span_context.span_id:016x}",
        span_context.trace_flags.sampled,
        span_context.trace_state.to_header(),
    )


def _span_context(context: TraceContext) -> Any:
    return trace.SpanContext(
        trace_id=int(context.trace_id, 16),
        span_id=int(context.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if context.sampled else 0),
        trace_state=trace.TraceState.from_header([context.tracestate]),
    )


class Production:
    """The PRODUCER span of one CreateTask or BatchCreateTasks call, if one is recorded."""

    __slots__ = ("span",)

    def __init__(self, span: Any = None) -> None:
        self.span = span

    def not_all_added(self, not_added: int, unknown: int) -> None:
        """A batch's tasks that were not (or may not have been) added."""
        if self.span is not None and (not_added or unknown):
            self.span.set_attribute("error.type", "BulkEnqueueError")
            self.span.set_status(
                trace.StatusCode.ERROR, f"{not_added} not added, {unknown} may have been added"
            )


@contextmanager
def producing(
    queue_id: str, requests: list[dict[str, Any]], message_id: str | None = None
) -> Iterator[Production]:
    """Put the trace context into the CreateTask ``requests``' headers; with an SDK, around a
    PRODUCER span ``send QUEUE`` (one per call, so one per batch of a bulk enqueue: every task of
    the batch carries its context)."""
    if not _recording():
        context = current()
        if context is not None:
            _stamp(requests, context.headers())
        yield Production()
        return
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_id,
    }
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    else:
        attributes["messaging.batch.message_count"] = len(requests)
    with _tracer().start_as_current_span(
        f"send {queue_id}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        _stamp(requests, _from_span_context(span.get_span_context()).headers())
        yield Production(span)


def _stamp(requests: list[dict[str, Any]], trace_headers: dict[str, str]) -> None:
    for request in requests:
        http = request["task"]["http_request"]
        # A new mapping: the backend shares one for every task's fixed headers.
        http["headers"] = {**http["headers"], **trace_headers}


@contextmanager
def consuming(
    result: TaskResult[..., Any], fields: dict[str, Any]
) -> Iterator[Callable[[Outcome], None]]:
    """The task's log ``fields`` for the time it runs and, with an SDK, its CONSUMER span.

    Yields a function that records the attempt's outcome on the span.
    """
    token = _task_fields.set(fields)
    try:
        if not _recording():
            yield _no_outcome
            return
        with _consumer_span(result, fields) as span:
            yield lambda outcome: _record_outcome(span, outcome)
    finally:
        _task_fields.reset(token)


def _no_outcome(outcome: Outcome) -> None:
    pass


@contextmanager
def _consumer_span(result: TaskResult[..., Any], fields: dict[str, Any]) -> Iterator[Any]:
    from django.tasks import task_backends

    creation = _request_trace.get()
    links = []
    parent = None
    if creation is not None:
        creation_context = _span_context(creation)
        links.append(trace.Link(creation_context))
        if not trace.get_current_span().get_span_context().is_valid:
            # No server span: the task's own trace continues from its creation context.
            parent = trace.set_span_in_context(trace.NonRecordingSpan(creation_context))
    backend = task_backends[result.backend]
    queue_id = backend.config.cloud_queue_for(  # type: ignore[attr-defined]
        result.task.queue_name, result.task.priority
    )
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue_id,
        "messaging.message.id": result.id,
        ATTEMPT_ATTRIBUTE: fields["attempt"],
        TASK_PATH_ATTRIBUTE: fields["task_path"],
    }
    with _tracer().start_as_current_span(
        f"process {queue_id}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    ) as span:
        yield span


def _record_outcome(span: Any, outcome: Outcome) -> None:
    exception = outcome.exception
    if exception is None:
        return
    span.record_exception(exception)
    span.set_attribute("error.type", f"{type(exception).__module__}.{type(exception).__qualname__}")
    span.set_attribute(f"messaging.{SYSTEM}.retry", outcome.retry)
    span.set_status(trace.StatusCode.ERROR, f"{type(exception).__qualname__}: {exception}")
