"""Mount under ``cloudtasks/``:

path("cloudtasks/", include("django_tasks_cloud_tasks.urls"))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.urls import ResolverMatch, URLPattern, path
from django.urls.resolvers import RoutePattern

from . import periodic, views

app_name = "django_tasks_cloud_tasks"


class ServerModePattern(URLPattern):
    """Routes to the async view when resolved on an event loop (ASGI), else to the sync view.

    Django runs an async view under WSGI on a new event loop per request, and a sync view under ASGI
    in a worker thread: either costs several times the view itself. Django resolves the URL on the
    thread that will call the view, so a running event loop there means an ASGI server.
    """

    def __init__(
        self,
        route: str,
        view: Callable[..., Any],
        async_view: Callable[..., Any],
        name: str,
    ) -> None:
        super().__init__(RoutePattern(route, name=name, is_endpoint=True), view, name=name)
        self.async_view = async_view

    def resolve(self, path: str) -> ResolverMatch | None:
        match = super().resolve(path)
        if match is not None and _on_event_loop():
            match.func = self.async_view
        return match


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


urlpatterns = [
    ServerModePattern("execute/", views.execute, views.aexecute, name="execute"),
    path("schedule/<str:name>/", periodic.enqueue_scheduled, name="schedule"),
]
