"""Google Cloud Tasks backend for Django's task framework (``django.tasks``).

The names below are imported on first use, so that the emulator (``.emulator``) can run in a
process that never imports Django.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import CloudTasksBackend
    from .exceptions import CloudTasksError, PayloadTooLarge

__all__ = ["CloudTasksBackend", "CloudTasksError", "PayloadTooLarge"]
__version__ = "0.2.0"

_LAZY = {
    "CloudTasksBackend": ".backend",
    "CloudTasksError": ".exceptions",
    "PayloadTooLarge": ".exceptions",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
