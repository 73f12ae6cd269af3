"""Deferred imports of diffusers, under one process-wide lock.

Importing diffusers takes seconds on a small CPU, so the app imports it after its page is up
(a warm-up thread) instead of at start. diffusers resolves its classes lazily; two threads
resolving them at once can meet half-initialised modules (seen here: a model load racing the
warm-up got no ``UNet2DConditionModel``). Every deferred import goes through this lock.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

_LOCK = threading.RLock()


def module(name: str) -> ModuleType:
    """``importlib.import_module(name)`` under the lock."""
    with _LOCK:
        return importlib.import_module(name)


def diffusers_attr(name: str):
    """``diffusers.<name>`` (a model, scheduler or pipeline class), resolved under the lock."""
    with _LOCK:
        return getattr(module("diffusers"), name)


def hold() -> threading.RLock:
    """The lock itself, to do several deferred imports as one step (``with lazy.hold(): ...``)."""
    return _LOCK
