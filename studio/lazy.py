"""Deferred imports: torch on first use, diffusers under one process-wide lock.

The app serves its page before torch and diffusers are imported (seconds on a small CPU); a
warm-up thread imports them once the page is up (:mod:`components.warm`). So every module the
page is built from (the methods' ``Params``, the tabs, the manager's registry) names torch
through :func:`load`, a module object that imports the real one on its first attribute access::

    torch = lazy.load("torch")        # nothing imported yet
    torch.zeros(3)                    # imports torch (once), then forwards to it

It is the pattern of scientific-python's ``lazy_loader.load``, written as a forwarding object
instead of ``importlib.util.LazyLoader`` (which that package uses): LazyLoader swaps the real
module into ``sys.modules`` on first access, and on Python 3.11 two threads touching it at that
moment can see a half-executed module; here the real module is imported the normal way
(Python's own per-module import locks make concurrent ``import torch`` safe) and never replaced.
Modules that are only imported after the warm-up (networks, training recipes) import torch
plainly. Decorators run at import, so ``@torch.no_grad()`` on such a module is :func:`no_grad`.

diffusers resolves its classes lazily; two threads resolving them at once can meet
half-initialised modules (seen here: a model load racing the warm-up got no
``UNet2DConditionModel``). Every deferred diffusers import goes through the lock of
:func:`module` / :func:`diffusers_attr` / :func:`hold`.

This module sits outside the layers (like :mod:`studio.errors`): every layer may use it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import threading
from types import ModuleType
from typing import Any, Callable, TypeVar

_LOCK = threading.RLock()
_PROXIES: dict[str, "LazyModule"] = {}
Fn = TypeVar("Fn", bound=Callable[..., Any])


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


class LazyModule(ModuleType):
    """Stands for the module ``name`` and imports it on the first attribute asked of it; every
    attribute is then the real module's (``torch.Tensor`` is ``torch.Tensor``)."""

    def __init__(self, name: str):
        super().__init__(name)
        self._real: ModuleType | None = None

    def loaded(self) -> ModuleType:
        """The real module, imported now if it was not yet."""
        real = self._real
        if real is None:
            real = self._real = importlib.import_module(self.__name__)
        return real

    def __getattr__(self, attr: str):  # only for names not on this object itself
        return getattr(self.loaded(), attr)

    def __dir__(self):
        return dir(self.loaded())

    def __repr__(self) -> str:
        state = "imported" if self._real is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def load(name: str) -> LazyModule:
    """The module ``name`` (``"torch"``, ``"torch.nn.functional"``), imported on first use."""
    with _LOCK:
        return _PROXIES.setdefault(name, LazyModule(name))


def no_grad(fn: Fn) -> Fn:
    """``@torch.no_grad()`` that imports torch at the first call instead of at decoration; a
    generator function keeps gradients off at every step, as torch's own decorator does."""
    torch = load("torch")
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def steps(*args, **kwargs):
            return (yield from torch.no_grad()(fn)(*args, **kwargs))
        return steps  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call  # type: ignore[return-value]

