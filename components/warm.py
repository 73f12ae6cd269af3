"""The app's warm-up: the engine's heavy imports (torch, diffusers, the studio's networks),
done once, under the one lock of :mod:`studio.lazy`.

Importing torch and diffusers takes seconds on a small CPU, so the app imports them after its page is up.
diffusers resolves its classes lazily, and two threads importing its modules at once can meet
half-initialised ones (``cannot import name 'ConfigMixin' from partially initialized module``).
So the warm-up thread and every request go through :func:`ensure_warm`: the first caller does
all the imports under the lock, later ones wait for it, and after that it costs one flag read.
:func:`~components.widgets.shows_errors` calls it before any handler's work (with a notice while it waits).
"""

from __future__ import annotations

import logging
import pkgutil

import studio
from studio import lazy

log = logging.getLogger(__name__)
DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "ModelMixin", "DiffusionPipeline")
# the studio's packages whose modules may import diffusers (or accelerate, peft) at their top
HEAVY_PACKAGES = ("nets", "train", "methods")
_done = False


def heavy_modules() -> list[str]:
    """Every module under studio.nets, studio.train and studio.methods (found by walking them)."""
    names = []
    for package in HEAVY_PACKAGES:
        path = [str(p) for p in studio.__path__]
        for info in pkgutil.iter_modules([f"{path[0]}/{package}"]):
            names.append(f"studio.{package}.{info.name}")
    return sorted(names)


def is_warm() -> bool:
    """Whether the warm-up imports are done."""
    return _done


def ensure_warm() -> None:
    """Do the warm-up imports once (the first caller), or wait until they are done (the others)."""
    global _done
    if _done:
        return
    with lazy.hold():
        if _done:
            return
        try:
            lazy.module("torch")  # the page was built without it (:mod:`studio.lazy`)
            from studio.core.loading import NET_MODULES
            from studio.core.sampling import SCHEDULERS, scheduler_class

            for name in DIFFUSERS_CLASSES:
                lazy.diffusers_attr(name)
            lazy.module("diffusers.training_utils")
            for name in (*NET_MODULES, *heavy_modules()):
                lazy.module(name)
            for name in SCHEDULERS:
                scheduler_class(name)
        except Exception:  # the first real use reports any problem to the user
            log.exception("warm-up import failed")
        _done = True
