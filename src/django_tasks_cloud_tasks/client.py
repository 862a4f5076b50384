"""The Cloud Tasks clients: built once per process (per event loop for async) and reused.

Django builds a backend instance per thread and per async context, so clients cannot live on the
backend: a client per instance (or per call) halves throughput against the emulator and costs a
credentials lookup per construction against Google. gRPC clients are thread-safe, so one sync client
serves every thread; an async client is bound to the event loop its channel was created on.

``google.cloud.tasks_v2`` costs about a quarter of a second to import, so it is imported here, on
first use, rather than when Django loads the backend.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .errors import enqueue_errors

if TYPE_CHECKING:
    from google.cloud.tasks_v2 import CloudTasksAsyncClient, CloudTasksClient, Task

    from .config import CloudTasksConfig

_sync_clients: dict[str | None, CloudTasksClient] = {}
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str | None, CloudTasksAsyncClient]
] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def create_task(config: CloudTasksConfig, queue_id: str, request: dict[str, Any]) -> Task:
    """Create a Cloud Tasks task, raising an error that names the queue and the fix."""
    with enqueue_errors(config, queue_id):
        return sync_client(config.emulator_host).create_task(request=request)


async def acreate_task(config: CloudTasksConfig, queue_id: str, request: dict[str, Any]) -> Task:
    """Create a Cloud Tasks task with the event loop's async client."""
    with enqueue_errors(config, queue_id):
        return await async_client(config.emulator_host).create_task(request=request)


def sync_client(emulator_host: str | None) -> CloudTasksClient:
    """The process's client for Google (``None``) or for the emulator at ``emulator_host``."""
    client = _sync_clients.get(emulator_host)
    if client is None:
        with _lock:
            client = _sync_clients.get(emulator_host)
            if client is None:
                client = _sync_clients[emulator_host] = _build_sync(emulator_host)
    return client


def async_client(emulator_host: str | None) -> CloudTasksAsyncClient:
    """The running event loop's client; must be called from a coroutine."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        clients = _async_clients[loop] = {}
    client = clients.get(emulator_host)
    if client is None:
        client = clients[emulator_host] = _build_async(emulator_host)
    return client


def _build_sync(emulator_host: str | None) -> CloudTasksClient:
    from google.cloud.tasks_v2 import CloudTasksClient

    if emulator_host is None:
        return CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    # api_endpoint would give a TLS channel, which an emulator does not speak.
    channel = grpc.insecure_channel(emulator_host)
    return CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def _build_async(emulator_host: str | None) -> CloudTasksAsyncClient:
    from google.cloud.tasks_v2 import CloudTasksAsyncClient

    if emulator_host is None:
        return CloudTasksAsyncClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(emulator_host)
    return CloudTasksAsyncClient(transport=CloudTasksGrpcAsyncIOTransport(channel=channel))


def _forget_clients() -> None:
    # gRPC channels do not survive fork(): a child (gunicorn --preload) builds its own.
    _sync_clients.clear()
    _async_clients.clear()


os.register_at_fork(after_in_child=_forget_clients)
