"""Finding the ``django.tasks.Task`` named by a payload's ``task_path`` — and nothing else.

A request chooses the path, so resolving it must not become a way to import or call arbitrary code.
The rule: a module that is not imported yet is imported only if it belongs to an app in
``INSTALLED_APPS`` (the code this project chose to run, where task modules live); any other module
is only looked into if something already imported it. The attribute is read from the module's
namespace without ``getattr`` (so no module ``__getattr__`` hook runs), and it is used only if it is
a ``Task`` instance. Nothing is called before that check.

A module that fails while it is imported (a missing setting or dependency) is a server fault, not
a missing task: its exception propagates, so that it reaches the error log and Cloud Tasks retries.

The execute view looks a task up through ``task_as_enqueued`` and checks each call's arguments
with ``check_arguments``; both keep what they worked out per process (see the package docstring's
list of caches), and both raise ``Refused`` for a request that names no task or cannot bind.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from functools import lru_cache
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.tasks import Task
from django.tasks.exceptions import InvalidTask

from .exceptions import Refused

if TYPE_CHECKING:
    from .payload import Payload

__all__ = ["check_arguments", "resolve_task", "task_as_enqueued"]


# Kept per process: finding the task (an import check against the installed apps) and validating
# it for its backend and queue (Task.using) cost more than every other lookup of a delivery. A
# failed lookup raises, so only tasks are kept, and a change of the settings they depend on clears
# them (below).
@lru_cache(maxsize=256)
def task_as_enqueued(
    task_path: str, backend: str, queue_name: str, priority: int
) -> Task[..., Any]:
    """The task with the backend, queue and priority it was enqueued with (``Task.using``)."""
    task = resolve_task(task_path)
    if task is None:
        raise Refused(404, f"{task_path!r} is not a django.tasks.Task of this project")
    if (task.backend, task.queue_name, task.priority) == (backend, queue_name, priority):
        return task  # Validated when it was defined; using() would validate it again.
    try:
        return task.using(backend=backend, queue_name=queue_name, priority=priority)
    except InvalidTask as exc:
        raise Refused(400, str(exc)) from None


@receiver(setting_changed)
def _forget_tasks(*, setting: str, **kwargs: Any) -> None:
    if setting in {"TASKS", "INSTALLED_APPS"}:
        task_as_enqueued.cache_clear()


def check_arguments(task: Task[..., Any], payload: Payload) -> None:
    """Refuse (400) a call that cannot bind: it would fail the same way on every retry."""
    positional = len(payload.args) + task.takes_context
    error = _binding_error(task.func, positional, tuple(payload.kwargs))
    if error is not None:
        raise Refused(400, f"{payload.task_path} does not accept these arguments: {error}")


@lru_cache(maxsize=1024)
def _binding_error(
    func: Callable[..., Any], positional: int, keywords: tuple[str, ...]
) -> str | None:
    """Why a call with this many positional arguments and these keywords cannot bind, if it can't.

    Binding looks only at how many positional arguments there are and at the keywords' names,
    never at values, so the verdict holds for every call of this shape.
    """
    try:
        inspect.signature(func).bind(*range(positional), **dict.fromkeys(keywords))
    except TypeError as exc:
        return str(exc)
    return None


def resolve_task(task_path: str) -> Task[..., Any] | None:
    """The Task at ``task_path`` (``package.module.name``), or None."""
    module_name, _, name = task_path.rpartition(".")
    if _in_installed_app(module_name):
        # import_module, even when the module is in sys.modules: it waits while another thread is
        # still running the module's body, where a sys.modules lookup would see it half-made.
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not _is_same_or_parent(exc.name, module_name):
                raise  # The task module exists but imports something missing: a real bug.
            return None
    else:
        imported = sys.modules.get(module_name)
        # sys.modules may hold other objects; their attributes could run code.
        if not isinstance(imported, ModuleType):
            return None
        module = imported
    candidate = vars(module).get(name)
    return candidate if isinstance(candidate, Task) else None


def _in_installed_app(module_name: str) -> bool:
    return any(_is_same_or_parent(app.name, module_name) for app in apps.get_app_configs())


def _is_same_or_parent(parent: str, module_name: str) -> bool:
    return module_name == parent or module_name.startswith(parent + ".")
