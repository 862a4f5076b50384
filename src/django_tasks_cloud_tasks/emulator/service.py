"""gRPC handlers for ``google.cloud.tasks.v2.CloudTasks``, built on the client's own messages.

The request and response classes come from the installed ``google-cloud-tasks``, so no generated
stubs or .proto files are involved, and new fields parse with whatever protobuf is installed.
Methods not registered here answer UNIMPLEMENTED with a message naming the emulator
(``unimplemented_handler``), so that a test failing on one does not look like a server fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.api_core.exceptions import GoogleAPICallError, InvalidArgument, MethodNotImplemented
from google.cloud import tasks_v2

from ..oidc import EMULATOR_OIDC_CONFIG_METHOD as OIDC_CONFIG_METHOD
from .names import check_location, check_queue_name, split_queue_name
from .paging import page
from .state import Store
from .tasks import prepare

SERVICE = "google.cloud.tasks.v2.CloudTasks"
# The backend asks this method where the emulator's keys are (see ``oidc.py``, which owns the name).
OIDC_SERVICE, _, _OIDC_METHOD_NAME = OIDC_CONFIG_METHOD.strip("/").rpartition("/")

# The documented page size limits: ListTasks 1000, ListQueues 9800.
MAX_TASK_PAGE = 1000
MAX_QUEUE_PAGE = 9800


class CloudTasksService:
    def __init__(self, store: Store) -> None:
        self._store = store

    def handler(self) -> Any:
        """A ``grpc.GenericRpcHandler`` for the service."""
        queue = tasks_v2.Queue.serialize
        task = tasks_v2.Task.serialize
        handlers = {
            "CreateQueue": _unary(self.create_queue, tasks_v2.CreateQueueRequest, queue),
            "GetQueue": _unary(self.get_queue, tasks_v2.GetQueueRequest, queue),
            "ListQueues": _unary(
                self.list_queues, tasks_v2.ListQueuesRequest, tasks_v2.ListQueuesResponse.serialize
            ),
            "UpdateQueue": _unary(self.update_queue, tasks_v2.UpdateQueueRequest, queue),
            "DeleteQueue": _unary(self.delete_queue, tasks_v2.DeleteQueueRequest, _empty),
            "PauseQueue": _unary(self.pause_queue, tasks_v2.PauseQueueRequest, queue),
            "ResumeQueue": _unary(self.resume_queue, tasks_v2.ResumeQueueRequest, queue),
            "PurgeQueue": _unary(self.purge_queue, tasks_v2.PurgeQueueRequest, queue),
            "CreateTask": _unary(self.create_task, tasks_v2.CreateTaskRequest, task),
            "GetTask": _unary(self.get_task, tasks_v2.GetTaskRequest, task),
            "ListTasks": _unary(
                self.list_tasks, tasks_v2.ListTasksRequest, tasks_v2.ListTasksResponse.serialize
            ),
            "DeleteTask": _unary(self.delete_task, tasks_v2.DeleteTaskRequest, _empty),
            "RunTask": _unary(self.run_task, tasks_v2.RunTaskRequest, task),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # Queues

    def create_queue(self, request: tasks_v2.CreateQueueRequest) -> tasks_v2.Queue:
        parent = check_location(request.parent)
        queue = request.queue
        location, _ = split_queue_name(queue.name)
        if location != parent:
            raise InvalidArgument(
                f"The queue name ('{queue.name}') must be under the parent ('{parent}')."
            )
        return self._store.create_queue(queue)

    def update_queue(self, request: tasks_v2.UpdateQueueRequest) -> tasks_v2.Queue:
        check_queue_name(request.queue.name)
        return self._store.update_queue(request.queue, request.update_mask)

    def get_queue(self, request: tasks_v2.GetQueueRequest) -> tasks_v2.Queue:
        return self._store.get_queue(check_queue_name(request.name))

    def list_queues(self, request: tasks_v2.ListQueuesRequest) -> tasks_v2.ListQueuesResponse:
        if request.filter:
            raise MethodNotImplemented(
                "The Cloud Tasks emulator does not support ListQueues filters: list every "
                "queue and filter them in the client."
            )
        queues, token = page(
            self._store.list_queues(check_location(request.parent)),
            _name,
            page_size=request.page_size,
            page_token=request.page_token,
            max_page_size=MAX_QUEUE_PAGE,
        )
        return tasks_v2.ListQueuesResponse(queues=queues, next_page_token=token)

    def delete_queue(self, request: tasks_v2.DeleteQueueRequest) -> None:
        self._store.delete_queue(check_queue_name(request.name))

    def pause_queue(self, request: tasks_v2.PauseQueueRequest) -> tasks_v2.Queue:
        return self._store.set_paused(check_queue_name(request.name), paused=True)

    def resume_queue(self, request: tasks_v2.ResumeQueueRequest) -> tasks_v2.Queue:
        return self._store.set_paused(check_queue_name(request.name), paused=False)

    def purge_queue(self, request: tasks_v2.PurgeQueueRequest) -> tasks_v2.Queue:
        return self._store.purge_queue(check_queue_name(request.name))

    # Tasks

    def create_task(self, request: tasks_v2.CreateTaskRequest) -> tasks_v2.Task:
        parent = check_queue_name(request.parent)
        new = prepare(parent, request.task, time.time())
        return _view(self._store.create_task(parent, new), request.response_view)

    def get_task(self, request: tasks_v2.GetTaskRequest) -> tasks_v2.Task:
        return _view(self._store.get_task(request.name), request.response_view)

    def list_tasks(self, request: tasks_v2.ListTasksRequest) -> tasks_v2.ListTasksResponse:
        tasks, token = page(
            self._store.list_tasks(check_queue_name(request.parent)),
            _name,
            page_size=request.page_size,
            page_token=request.page_token,
            max_page_size=MAX_TASK_PAGE,
        )
        view = request.response_view
        return tasks_v2.ListTasksResponse(
            tasks=[_view(task, view) for task in tasks], next_page_token=token
        )

    def delete_task(self, request: tasks_v2.DeleteTaskRequest) -> None:
        self._store.delete_task(request.name)

    def run_task(self, request: tasks_v2.RunTaskRequest) -> tasks_v2.Task:
        return _view(self._store.run_task(request.name), request.response_view)


def oidc_config_handler(issuer: str, certs_url: str) -> Any:
    """A ``grpc.GenericRpcHandler`` for GetOidcConfig.

    It tells a client that knows only the gRPC address where the token issuer and its keys are.
    The request is ignored and the answer is UTF-8 JSON, so no message types are needed.
    """
    config = json.dumps({"issuer": issuer, "certs_url": certs_url}).encode()

    def get_oidc_config(request: bytes, context: Any) -> bytes:
        return config

    handler = grpc.unary_unary_rpc_method_handler(
        get_oidc_config,
        request_deserializer=_identity,
        response_serializer=_identity,
    )
    return grpc.method_handlers_generic_handler(OIDC_SERVICE, {_OIDC_METHOD_NAME: handler})


class _Unimplemented(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every method no other handler took, naming it and the emulator."""

    def service(self, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        message = (
            f"The Cloud Tasks emulator does not implement {method}. Its documentation lists the "
            "methods it serves; use a real Cloud Tasks project for the others."
        )

        def refuse(request: bytes, context: Any) -> bytes:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            raise AssertionError("abort() raises")  # pragma: no cover

        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=_identity, response_serializer=_identity
        )


def unimplemented_handler() -> Any:
    """The handler of last resort: register it after every other."""
    return _Unimplemented()


def _unary[Request, Response](
    method: Callable[[Request], Response],
    request_type: Any,
    serialize: Callable[[Response], bytes],
) -> Any:
    def call(request: Request, context: Any) -> Response:
        try:
            return method(request)
        except GoogleAPICallError as exc:
            context.abort(exc.grpc_status_code, exc.message)
            raise  # abort() always raises; this line only tells type checkers so

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=request_type.deserialize,
        response_serializer=serialize,
    )


def _view(task: tasks_v2.Task, view: tasks_v2.Task.View) -> tasks_v2.Task:
    """``task`` as the requested view shows it.

    Both views return the HTTP body and headers. Whether the real BASIC view drops an HTTP
    task's body is unverified; the documentation only says it drops App Engine bodies.
    """
    if view != tasks_v2.Task.View.FULL:
        return task
    return tasks_v2.Task(task, view=tasks_v2.Task.View.FULL)


def _name(message: tasks_v2.Queue | tasks_v2.Task) -> str:
    return str(message.name)


def _empty(_: None) -> bytes:
    return b""


def _identity(data: bytes) -> bytes:
    return data
