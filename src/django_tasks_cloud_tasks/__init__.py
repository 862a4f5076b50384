"""Google Cloud Tasks backend for Django's task framework (``django.tasks``).

What users may import or name, and nothing else, is public:

- ``django_tasks_cloud_tasks.CloudTasksBackend`` (the ``BACKEND`` of ``TASKS``), with the exceptions
  ``CloudTasksError``, ``EnqueueOutcomeUnknown``, ``BulkEnqueueError``, ``PayloadTooLarge`` and
  ``PermanentFailure``, the task class ``CloudTask`` (``max_attempts``), the ``task`` decorator,
  and bulk enqueue (``Call``, ``enqueue_many``, ``aenqueue_many``), all importable from this
  package;
- ``django_tasks_cloud_tasks`` in ``INSTALLED_APPS`` (the result store, its admin and checks) and
  ``django_tasks_cloud_tasks.urls`` (the execute view and the schedules' endpoint, to ``include``
  under ``cloudtasks/``);
- the management commands ``cloudtasks_emulator``, ``cloudtasks_sync``, ``cloudtasks_schedules``,
  ``cloudtasks_recover`` and ``prune_task_results``;
- ``django_tasks_cloud_tasks.emulator`` (``Emulator``, ``DispatchRecord``, ``OIDC_CONFIG_METHOD``)
  and its standalone entry points, the ``cloud-tasks-emulator`` script and ``python -m
  django_tasks_cloud_tasks.emulator`` (``emulator.cli``);
- ``django_tasks_cloud_tasks.testing`` (``CloudTasksHarness``, ``CloudTasksTestCase``,
  ``EnqueuedTask``, ``TEST_QUEUE_RETRY``, ``start_emulator``) and the pytest plugin
  (``pytest_plugin``: the ``cloud_tasks`` and ``cloud_tasks_emulator`` fixtures);
- ``django_tasks_cloud_tasks.tracing.TraceContextMiddleware`` (``MIDDLEWARE``) and
  ``django_tasks_cloud_tasks.cloud_logging``'s ``CloudLoggingFormatter`` and ``CloudTraceFilter``
  (``LOGGING``).

Every other module and name is internal and may change in any release; each module users import
lists its public names in ``__all__``.

Process-wide caches, what clears them, and why each is safe to keep:

- ``config.resolve``: each backend's resolved configuration, keyed by its alias, OPTIONS and the
  environment variables it reads; for the life of the process (a change makes a new key).
- ``auth.cloud_tasks_backends``: the project's Cloud Tasks backends and who may use them; until
  ``TASKS`` changes (Django's ``setting_changed``).
- ``resolution.task_as_enqueued``: the task for each path, backend, queue and priority, 256 at
  most; until ``TASKS`` or ``INSTALLED_APPS`` changes.
- ``resolution._binding_error``: whether a call of one shape binds to a task function, 1024 at
  most; never cleared (a function's signature does not change).
- ``execution.worker_id``: this host and process id; a forked child gets its own (keyed by pid).
- ``oidc.certificates``: each issuer's public keys, for the lifetime they advertise (5 minutes
  when they don't), re-fetched early for an unknown key id at most every 30 seconds.
- ``oidc.emulator_issuer``: where the local emulator at each address publishes its keys; until
  the end of the current minute (an emulator restarted on new ports is found again), 8 at most.
- ``client``: the Cloud Tasks clients, per emulator host (per event loop for async clients), and
  the default Google credentials; dropped in a forked child, whose gRPC channels would not work.
- ``transport.http_request``: the one HTTP transport (google-auth's, on a ``requests`` session)
  of the metadata server and the certificate fetches; dropped in a forked child.
- ``statements``: each statement's SQL text per database vendor; for the life of the process.
- ``leases``: not a cache but process-wide state: the leases of the attempts running in this
  process and the one thread that renews them; each lease goes when its attempt ends, and a forked
  child starts with neither.
- In the emulator, which keeps no Django state: ``sender``'s split task URLs (4096 at most) and
  its TLS context, for the life of the process (a URL's parts do not change).

The names below are imported on first use, so that the emulator (``.emulator``) can run in a
process that never imports Django.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attempts import CloudTask, task
    from .backend import Call, CloudTasksBackend, aenqueue_many, enqueue_many
    from .exceptions import (
        BulkEnqueueError,
        CloudTasksError,
        EnqueueOutcomeUnknown,
        PayloadTooLarge,
        PermanentFailure,
    )

__all__ = [
    "BulkEnqueueError",
    "Call",
    "CloudTask",
    "CloudTasksBackend",
    "CloudTasksError",
    "EnqueueOutcomeUnknown",
    "PayloadTooLarge",
    "PermanentFailure",
    "aenqueue_many",
    "enqueue_many",
    "task",
]
__version__ = "0.2.0"

_LAZY = {
    "CloudTask": ".attempts",
    "task": ".attempts",
    "Call": ".backend",
    "CloudTasksBackend": ".backend",
    "aenqueue_many": ".backend",
    "enqueue_many": ".backend",
    "BulkEnqueueError": ".exceptions",
    "CloudTasksError": ".exceptions",
    "EnqueueOutcomeUnknown": ".exceptions",
    "PayloadTooLarge": ".exceptions",
    "PermanentFailure": ".exceptions",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
