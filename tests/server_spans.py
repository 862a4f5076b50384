"""A SERVER span per request, as OpenTelemetry's server instrumentations open one.

On when the settings say ``TRACE_SERVER_SPANS = True`` and an SDK is configured: the tracing tests
run with and without a server span around the execute view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from opentelemetry import propagate, trace

tracer = trace.get_tracer("tests.server_spans")


@contextmanager
def server_span(request: HttpRequest) -> Iterator[Any]:
    if not getattr(settings, "TRACE_SERVER_SPANS", False):
        yield None
        return
    parent = propagate.extract(request.headers)  # Case-insensitive, as headers are.
    with tracer.start_as_current_span(
        f"{request.method} {request.path}", context=parent, kind=trace.SpanKind.SERVER
    ) as span:
        yield span


class ServerSpanMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with server_span(request):
            return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        with server_span(request):
            return await self.get_response(request)  # type: ignore[no-any-return]
