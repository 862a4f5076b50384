"""gRPC handlers for ``google.cloud.tasks.v2.CloudTasks``, built on the client's own messages.

The request and response classes come from the installed ``google-cloud-tasks``, so no generated
stubs or .proto files are involved, and new fields parse with whatever protobuf is installed.
Methods not registered here answer UNIMPLEMENTED with a message naming the emulator
(``unimplemented_handler``), so that a test failing on one does not look like a server fault.
Every call passes through ``_unary``, which is also where the fault plans of ``faults.py`` make a
call fail or answer late (the Cloud Scheduler service's calls too).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.api_core.exceptions import GoogleAPICallError, InvalidArgument, MethodNotImplemented
from google.cloud import tasks_v2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2
from google.rpc import code_pb2, status_pb2

from ..limits import MAX_BATCH_CREATE, MAX_BATCH_DELETE
from ..oidc import EMULATOR_OIDC_CONFIG_METHOD as OIDC_CONFIG_METHOD
from . import faults
from .clock import timestamp
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
# Batch operations remembered by request_id, so that a client's retry gets the first answer.
MAX_REMEMBERED_OPERATIONS = 1000
_FAULT_MESSAGE = "Fault injected by the Cloud Tasks emulator"


class CloudTasksService:
    def __init__(self, store: Store, fault_plans: faults.Faults | None = None) -> None:
        self._store = store
        self.faults = faults.Faults() if fault_plans is None else fault_plans
        self._operations: OrderedDict[str, operations_pb2.Operation] = OrderedDict()
        self._batch_lock = threading.Lock()

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
            "BatchCreateTasks": _unary(
                self.batch_create_tasks, tasks_v2.BatchCreateTasksRequest, _serialize_operation
            ),
            "BatchDeleteTasks": _unary(
                self.batch_delete_tasks, tasks_v2.BatchDeleteTasksRequest, _serialize_operation
            ),
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

    # Batches: answered, as the real service does, with a long-running Operation, here one that
    # is already done, so that the client's ``operation.result()`` needs no GetOperation.

    def batch_create_tasks(
        self, request: tasks_v2.BatchCreateTasksRequest
    ) -> operations_pb2.Operation:
        parent = check_queue_name(request.parent)
        self._store.get_queue(parent)  # NOT_FOUND before anything else, as for CreateTask.
        creates = request.requests
        _check_batch_size(len(creates), MAX_BATCH_CREATE, "requests")
        for each in creates:
            if each.parent != parent:
                raise InvalidArgument(
                    f"Every request's parent must be the batch's parent ('{parent}'), not "
                    f"'{each.parent}'."
                )

        def create() -> tuple[Any, Any, None]:
            created, failed = [], {}
            for index, each in enumerate(creates):
                try:
                    new = prepare(parent, each.task, time.time())
                    created.append(_view(self._store.create_task(parent, new), each.response_view))
                except GoogleAPICallError as exc:
                    failed[index] = _status(exc)
            state = tasks_v2.BatchCreateTasksMetadata.State
            # Not atomic: what failed is listed by index. Whether a batch in which every task
            # failed is PARTIALLY_SUCCEEDED or FAILED is not documented; FAILED is documented
            # as an internal error, so the emulator says PARTIALLY_SUCCEEDED.
            metadata = tasks_v2.BatchCreateTasksMetadata(
                state=state.PARTIALLY_SUCCEEDED if failed else state.SUCCEEDED,
                failed_requests=failed,
            )
            response = tasks_v2.BatchCreateTasksResponse(tasks=created)
            return tasks_v2.BatchCreateTasksResponse.pb(response), metadata, None

        return self._operation(parent, request.request_id, create)

    def batch_delete_tasks(
        self, request: tasks_v2.BatchDeleteTasksRequest
    ) -> operations_pb2.Operation:
        parent = check_queue_name(request.parent)
        self._store.get_queue(parent)
        names = request.names
        _check_batch_size(len(names), MAX_BATCH_DELETE, "names")

        def delete() -> tuple[Any, Any, status_pb2.Status | None]:
            failed = {}
            for index, name in enumerate(names):
                try:
                    if not name.startswith(f"{parent}/tasks/"):
                        raise InvalidArgument(f"Task '{name}' is not in queue '{parent}'.")
                    self._store.delete_task(name)
                except GoogleAPICallError as exc:
                    failed[index] = _status(exc)
            state = tasks_v2.BatchDeleteTasksMetadata.State
            error = None
            if not failed:
                code = state.SUCCEEDED
            elif len(failed) < len(names):
                code = state.PARTIALLY_SUCCEEDED
            else:
                code = state.FAILED
                # Documented: when every delete fails, the operation's error is ABORTED.
                error = status_pb2.Status(code=code_pb2.ABORTED, message="Every delete failed.")
            metadata = tasks_v2.BatchDeleteTasksMetadata(state=code, failed_requests=failed)
            return empty_pb2.Empty(), metadata, error

        return self._operation(parent, request.request_id, delete)

    def _operation(
        self, queue: str, request_id: str, run: Callable[[], tuple[Any, Any, Any]]
    ) -> operations_pb2.Operation:
        """Run a batch once per ``request_id`` and answer it as a finished Operation.

        ``run`` returns the raw response message, the metadata and the operation's error (None
        unless the whole batch failed).
        """
        location, _ = split_queue_name(queue)
        name = f"{location}/operations/{request_id or uuid.uuid4()}"
        key = f"{run.__name__}:{name}"
        with self._batch_lock:
            remembered = self._operations.get(key)
            if remembered is not None:
                return remembered
            started = time.time()
            response, metadata, error = run()
            metadata.start_time = timestamp(started)
            metadata.end_time = timestamp(time.time())
            operation = operations_pb2.Operation(name=name, done=True)
            operation.metadata.Pack(type(metadata).pb(metadata))
            if error is not None:
                operation.error.CopyFrom(error)
            else:
                operation.response.Pack(response)
            self._operations[key] = operation
            while len(self._operations) > MAX_REMEMBERED_OPERATIONS:
                self._operations.popitem(last=False)
            return operation


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
    # Every RPC is a method of the service named after it (create_task: CreateTask), so the
    # service's fault plans are found here, where every call passes.
    plans: faults.Faults = method.__self__.faults  # type: ignore[attr-defined]
    rpc = "".join(word.title() for word in method.__name__.split("_"))

    def call(request: Request, context: Any) -> Response:
        fault = plans.take(rpc)
        if fault is not None and fault.status is not None and not fault.after_success:
            faults.wait(fault.delay, context)
            context.abort(fault.status, f"{_FAULT_MESSAGE}: {rpc} refused.")
        try:
            response = method(request)
        except GoogleAPICallError as exc:
            context.abort(exc.grpc_status_code, exc.message)
            raise  # abort() always raises; this line only tells type checkers so
        if fault is not None:
            faults.wait(fault.delay, context)
            if fault.status is not None:
                context.abort(fault.status, f"{_FAULT_MESSAGE}: {rpc} succeeded, answer lost.")
        return response

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


def _check_batch_size(count: int, limit: int, field: str) -> None:
    if not 1 <= count <= limit:
        raise InvalidArgument(f"A batch needs between 1 and {limit} {field}, not {count}.")


def _status(exc: GoogleAPICallError) -> status_pb2.Status:
    code = exc.grpc_status_code or grpc.StatusCode.UNKNOWN
    return status_pb2.Status(code=code.value[0], message=exc.message)


def _serialize_operation(operation: operations_pb2.Operation) -> bytes:
    data: bytes = operation.SerializeToString()
    return data


def _empty(_: None) -> bytes:
    return b""


def _identity(data: bytes) -> bytes:
    return data
