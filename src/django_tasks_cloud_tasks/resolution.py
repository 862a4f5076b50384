"""Finding the ``django.tasks.Task`` named by a payload's ``task_path`` — and nothing else.

A request chooses the path, so resolving it must not become a way to import or call arbitrary code.
The rule: a module that is not imported yet is imported only if it belongs to an app in
``INSTALLED_APPS`` (the code this project chose to run, where task modules live); any other module
is only looked into if something already imported it. The attribute is read from the module's
namespace without ``getattr`` (so no module ``__getattr__`` hook runs), and it is used only if it is
a ``Task`` instance. Nothing is called before that check.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import Any

from django.apps import apps
from django.tasks import Task


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
