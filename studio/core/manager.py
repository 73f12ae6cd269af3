"""ModelManager: one per process, shared by every tab and notebook.

* ``register(key, loader)``: a zero-argument callable that builds the model (lazy: nothing is
  loaded until first use). ``register_zoo()`` registers every zoo entry; ``add_source()`` a
  local diffusers folder or hub id.
* ``use(key)``: a context manager that lends the model on the manager's device. Leases are
  read-only: on return the manager checks the tensors' in-place version counters and, if a
  borrower changed the weights, drops the damaged copy and raises :class:`LeaseViolation`
  (a method that trains works on ``copy.deepcopy`` or an adapter and registers the result).
* LRU eviction within a RAM budget (models in use are never evicted); on an accelerator at most
  ``max_on_accelerator`` models stay there, the rest go back to the CPU.
* One lock guards state changes; loading happens under it, inference outside it.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from studio import lazy
from studio.core import loading
from studio.core.device import pick_device
from studio.core.models import model_kind

torch = lazy.load("torch")

DEFAULT_RAM_BUDGET = 2 * 1024**3


class LeaseViolation(RuntimeError):
    """A borrower changed a leased model's weights in place."""


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class _Entry:
    key: str
    loader: Callable[[], Any]
    obj: Any = None
    nbytes: int = 0
    where: str = "not loaded"
    last_used: float = 0.0
    leases: int = 0
    load_seconds: float = 0.0
    info: dict = field(default_factory=dict)


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for m in loading.modules_of(obj) for t in (*m.parameters(), *m.buffers())]


def _fingerprint(obj: Any) -> int:
    """Sum of in-place version counters: any in-place write to a weight changes it."""
    return sum(t._version for t in _tensors(obj))


def _move(obj: Any, device: torch.device) -> None:
    for m in loading.modules_of(obj):
        m.to(device)


class ModelManager:
    def __init__(self, device: str | torch.device | None = None, ram_budget: int = DEFAULT_RAM_BUDGET,
                 max_on_accelerator: int = 2, precision: str = "fp32"):
        """``precision``: "fp32" keeps every model as trained; "auto" lets a diffusion model whose zoo entry
        records its quality in reduced precision run in it where it is faster on this machine
        (:mod:`studio.core.precision`, timed once when the model first loads)."""
        if precision not in ("fp32", "auto"):
            raise ValueError(f"precision must be 'fp32' or 'auto', not {precision!r}")
        self.precision = precision
        self._device_asked, self._device = device, None
        self.ram_budget = ram_budget
        self.max_on_accelerator = max_on_accelerator
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        """The device models are lent on: the one asked for, else cuda > mps > cpu. Decided on first use,
        since asking torch imports it, and the app builds its page before torch is imported."""
        if self._device is None:
            asked = self._device_asked
            self._device = torch.device(asked) if asked is not None else pick_device()
        return self._device

    # registry ------------------------------------------------------------------------------
    def register(self, key: str, loader: Callable[[], Any], replace: bool = False, info: dict | None = None) -> None:
        """Register ``loader`` under ``key``; ``info`` is what is known without loading
        (e.g. a zoo entry's studio.json: kind, domain, conditioning)."""
        with self._lock:
            if key in self._entries and not replace:
                raise ValueError(f"model key {key!r} is already registered")
            old = self._entries.get(key)
            if old is not None and old.leases:
                raise RuntimeError(f"model {key!r} is in use and cannot be replaced now")
            self._entries[key] = _Entry(key, loader, info=dict(info or {}))

    def register_zoo(self, zoo=loading.ZOO_DIR) -> list[str]:
        """Register every MANIFEST entry under its name; returns the names."""
        names = sorted(loading.read_manifest(zoo))
        for name in names:
            if name not in self._entries:
                self.register(name, lambda n=name: loading.load_zoo(n, zoo), info=loading.entry_info(zoo / name))
        if "text-encoder" not in self._entries:
            from studio.data.text import load_text_encoder

            self.register("text-encoder", load_text_encoder, info={"kind": "text-encoder"})
        return names

    def add_source(self, source: str, key: str | None = None) -> str:
        """Register a zoo name, local diffusers folder or hub id; it loads on first use."""
        key = key or source
        if key not in self._entries:
            info = loading.entry_info(Path(source)) or {"kind": "diffusion"}  # a pipeline folder or hub id
            self.register(key, lambda: loading.resolve(source), info=info)
        return key

    def info(self, key: str) -> dict:
        """What was registered about ``key`` without loading it ({} for an unknown key)."""
        with self._lock:
            e = self._entries.get(key)
            return dict(e.info) if e is not None else {}

    def keys(self, kinds: tuple[str, ...] | None = None) -> list[str]:
        """Registered keys, in registration order; with ``kinds``, only models of those kinds
        (:func:`studio.core.models.model_kind` of what was registered, read without loading)."""
        with self._lock:
            if kinds is None:
                return list(self._entries)
            return [k for k, e in self._entries.items() if model_kind(e.info) in kinds]

    def kind(self, key: str) -> str:
        """:func:`~studio.core.models.model_kind` of ``key`` (without loading it)."""
        return model_kind(self.info(key))

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # leases --------------------------------------------------------------------------------
    def _load(self, e: _Entry) -> None:
        t0 = time.perf_counter()
        obj = e.loader()
        e.obj, e.nbytes, e.where = obj, loading.module_bytes(obj), "cpu"
        e.load_seconds = time.perf_counter() - t0

    def _place(self, e: _Entry) -> None:
        if self.device.type == "cpu" or e.where == self.device.type:
            return
        _move(e.obj, self.device)
        e.where = self.device.type
        on_acc = sorted((x for x in self._entries.values() if x.where == self.device.type and x is not e),
                        key=lambda x: x.last_used)
        for x in on_acc[: max(0, len(on_acc) + 1 - self.max_on_accelerator)]:
            if not x.leases:
                _move(x.obj, torch.device("cpu"))
                x.where = "cpu"

    def _enforce_budget(self, keep: _Entry) -> None:
        loaded = sorted((x for x in self._entries.values() if x.obj is not None and x is not keep),
                        key=lambda x: x.last_used)
        total = sum(x.nbytes for x in self._entries.values() if x.obj is not None)
        for x in loaded:
            if total <= self.ram_budget:
                break
            if not x.leases:
                total -= x.nbytes
                self._unload(x)

    @staticmethod
    def _unload(e: _Entry) -> None:
        e.obj, e.nbytes, e.where = None, 0, "not loaded"

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """Lend model ``key`` (loading it if needed) for the ``with`` block; read-only."""
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                raise UnknownModel(f"unknown model {key!r}; registered: {', '.join(self._entries) or 'none'}")
            fresh = e.obj is None
            if fresh:
                self._load(e)
            e.leases += 1
            e.last_used = time.time()
            try:
                self._place(e)
                self._enforce_budget(keep=e)
                if fresh and self.precision == "auto":
                    from studio.core import precision  # times the forward through this manager (a nested lease)

                    precision.apply(self, key, e.obj)
            except BaseException:
                e.leases -= 1
                raise
            obj, before = e.obj, _fingerprint(e.obj)
        try:
            yield obj
        finally:
            with self._lock:
                e.leases -= 1
                e.last_used = time.time()
                changed = e.obj is obj and _fingerprint(obj) != before
                if changed and not e.leases:
                    self._unload(e)
            if changed:
                raise LeaseViolation(
                    f"the weights of {key!r} were changed in place during a lease; leases are read-only. "
                    "Train a copy (copy.deepcopy) or an adapter and register it under a new key. "
                    "The damaged copy was dropped and will be reloaded from disk."
                )

    # panel ---------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        """One row per registered model: key, where, MiB, leases, last used, load seconds."""
        with self._lock:
            return [{
                "model": e.key, "where": e.where, "MiB": round(e.nbytes / 2**20, 2), "in use": e.leases,
                "last used": time.strftime("%H:%M:%S", time.localtime(e.last_used)) if e.last_used else "",
                "load s": round(e.load_seconds, 2),
            } for e in self._entries.values()]

    def evict(self, key: str | None = None) -> list[str]:
        """Unload ``key`` (or every model not in use); returns what was unloaded."""
        with self._lock:
            targets = [self._entries[key]] if key is not None else list(self._entries.values())
            if key is not None and key not in self._entries:
                raise UnknownModel(f"unknown model {key!r}")
            done = []
            for e in targets:
                if e.obj is not None and not e.leases:
                    self._unload(e)
                    done.append(e.key)
                elif e.leases and key is not None:
                    raise RuntimeError(f"model {key!r} is in use; try again when the run finishes")
            return done

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if e.obj is not None)


_DEFAULT: ModelManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> ModelManager:
    """The process-wide manager with the zoo registered (created on first call)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelManager(precision="auto")
            _DEFAULT.register_zoo()
        return _DEFAULT
