"""ModelManager with tiny modules: LRU, budget, threads, lock release, read-only leases."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from studio.core.manager import LeaseViolation, ModelManager, UnknownModel


def linear(n=256):  # 256 x 256 fp32 + bias = 263,168 bytes
    return lambda: torch.nn.Linear(n, n)


BYTES = 256 * 256 * 4 + 256 * 4


def loaded(m):
    return {r["model"] for r in m.status() if r["where"] != "not loaded"}


def test_lazy_load_and_lru_eviction_within_budget():
    m = ModelManager(device="cpu", ram_budget=2 * BYTES)
    for k in "abc":
        m.register(k, linear())
    assert loaded(m) == set()  # registering loads nothing
    with m.use("a"):
        pass
    with m.use("b"):
        pass
    with m.use("a"):  # a is now more recent than b
        pass
    with m.use("c"):  # over budget: the least recently used (b) goes
        pass
    assert loaded(m) == {"a", "c"}
    assert m.loaded_bytes == 2 * BYTES


def test_models_in_use_are_never_evicted():
    m = ModelManager(device="cpu", ram_budget=BYTES)
    m.register("a", linear())
    m.register("b", linear())
    with m.use("a") as a:
        with m.use("b"):
            assert loaded(m) == {"a", "b"}  # over budget, but both are lent
        assert a.weight.shape == (256, 256)
    with pytest.raises(RuntimeError, match="in use"):
        with m.use("a"):
            m.evict("a")


def test_status_and_evict():
    m = ModelManager(device="cpu")
    m.register("a", linear())
    with m.use("a"):
        pass
    row = m.status()[0]
    assert row["model"] == "a" and row["where"] == "cpu" and row["MiB"] == round(BYTES / 2**20, 2) and row["last used"]
    assert m.evict() == ["a"] and loaded(m) == set()
    with pytest.raises(UnknownModel, match="unknown model 'zz'"):
        with m.use("zz"):
            pass
    with pytest.raises(ValueError, match="already registered"):
        m.register("a", linear())


def test_an_exception_inside_use_releases_the_lease_and_lock():
    m = ModelManager(device="cpu")
    m.register("a", linear())
    with pytest.raises(ZeroDivisionError):
        with m.use("a"):
            1 / 0
    assert m.status()[0]["in use"] == 0
    done = []
    th = threading.Thread(target=lambda: done.append(m.evict("a")))
    th.start()
    th.join(5)
    assert done == [["a"]]  # another thread got the lock


def test_a_failing_loader_leaves_the_manager_usable():
    m = ModelManager(device="cpu")
    m.register("bad", lambda: (_ for _ in ()).throw(OSError("disk on fire")))
    m.register("good", linear())
    with pytest.raises(OSError, match="disk on fire"):
        with m.use("bad"):
            pass
    with m.use("good") as g:
        assert g is not None


def test_two_threads_contending_load_once_and_share():
    loads = []

    def slow_loader():
        loads.append(1)
        time.sleep(0.2)
        return torch.nn.Linear(4, 4)

    m = ModelManager(device="cpu")
    m.register("a", slow_loader)
    seen, errors = [], []

    def worker():
        try:
            for _ in range(20):
                with m.use("a") as mod:
                    seen.append(id(mod))
                    mod(torch.zeros(1, 4))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(loads) == 1 and len(set(seen)) == 1 and len(seen) == 40
    assert m.status()[0]["in use"] == 0


def test_a_lease_cannot_silently_change_the_cached_weights():
    m = ModelManager(device="cpu")
    m.register("a", linear(8))
    with m.use("a") as mod:
        original = mod.weight.detach().clone()
    with pytest.raises(LeaseViolation, match="read-only"):
        with m.use("a") as mod:
            with torch.no_grad():
                mod.weight.add_(1.0)
    with m.use("a") as mod:  # the damaged copy was dropped; a fresh load comes back
        fresh = mod.weight.detach().clone()
    assert not torch.equal(fresh, original + 1.0)
    with m.use("a") as mod:  # reading (even with autograd on) is fine
        mod(torch.ones(1, 8)).sum().backward()


def test_info_is_known_without_loading():
    m = ModelManager(device="cpu")
    m.register("a", linear(), info={"kind": "diffusion", "conditioning": "class"})
    assert m.info("a") == {"kind": "diffusion", "conditioning": "class"} and loaded(m) == set()
    m.info("a")["kind"] = "changed"  # a copy: callers cannot change the registry
    assert m.info("a")["kind"] == "diffusion" and m.info("unknown") == {}
