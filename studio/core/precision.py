"""Measured precision: one diffusion model's forward in fp32 against the device's reduced precision.

Reduced precision pays on some machines and not on others: bf16 autocast made the zoo's UNets
about 1.5x faster on a CPU with native bf16 and 20-30x *slower* on one that emulates it (issue
29). So nothing is switched on blindly: :func:`measure` times both forwards on this machine (and
their largest difference), and :func:`choose` applies the rule

* reduced precision only where it is at least :data:`MIN_SPEEDUP` times faster here, **and**
* only where the model's zoo entry records its judge accuracy and FD under that precision as no
  worse than in fp32 (``studio.json``: ``"reduced_precision": {"bf16": true}``, written by
  ``benchmarks/bench_speed_defaults.py --record``: inside the fp32 intervals and no paired
  difference, same prompts and noise, that says worse).

A manager made with ``precision="auto"`` (the app's and the CLI's, :func:`studio.core.manager.default_manager`)
calls :func:`apply` when it loads a model: an entry that records its quality in this device's reduced
precision is timed (about a second, once per process) and, where the rule allows, its ``model_fn``
runs under autocast from then on (:attr:`studio.core.models.DiffusionModel.precision`; the images'
parameters name it). Entries with no record, and model types whose ``model_fn`` is their own (latent
pipelines, series, INR), are not timed and stay fp32. Managers made without it (the tests',
scripts') keep every model in fp32, so a figure measured there does not depend on the machine's
bf16 speed. The Models tab shows the timings and the reason. Timings are kept per process (model,
device); a machine that is measured again gets the same answer within its noise.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

from studio import lazy
from studio.core.conditioning import repeat, text_conditions
from studio.core.models import AUTOCAST_DTYPES, DiffusionModel

torch = lazy.load("torch")

MIN_SPEEDUP = 1.1
REDUCED = {"cpu": "bf16", "cuda": "fp16", "mps": "fp16"}  # the reduced precision tried per device type
_CACHE: dict[tuple[str, str], "PrecisionTiming"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PrecisionTiming:
    model: str
    device: str
    batch: int
    fp32_ms: float          # best-of-``repeats`` forward time, fp32
    reduced: str            # "bf16" (CPU) or "fp16" (CUDA, MPS)
    reduced_ms: float       # the same forward under autocast to ``reduced``
    rel_diff: float         # max |fp32 - reduced| / std(fp32 output)
    choice: str             # "fp32" or ``reduced``: what the rule picks
    why: str

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.reduced_ms


def choose(speedup: float, reduced: str, recorded: dict | None) -> tuple[str, str]:
    """(the precision to use, why) from the measured ``speedup`` and the zoo entry's record
    ``recorded`` (``{"bf16": True}`` where its judge accuracy and FD in bf16 were measured no worse than in fp32)."""
    if speedup < MIN_SPEEDUP:
        return "fp32", f"{reduced} is not faster here ({speedup:.2f}x; at least {MIN_SPEEDUP}x needed)"
    if not (recorded or {}).get(reduced):
        return "fp32", (f"{reduced} is {speedup:.2f}x faster here, but this model's zoo entry records no judge "
                        f"accuracy and FD in {reduced} no worse than in fp32")
    return reduced, f"{reduced} is {speedup:.2f}x faster here and its recorded quality is no worse than fp32's"


def _inputs(dm: DiffusionModel, manager, batch: int, device: torch.device) -> tuple:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *dm.sample_shape), generator=gen).to(device)
    t = torch.full((batch,), int(dm.scheduler_config.get("num_train_timesteps", 1000)) // 2, device=device)
    if dm.conditioning == "class":
        cond = {"class_labels": torch.zeros(batch, dtype=torch.long, device=device)}
    elif dm.conditioning == "text":
        cond = {k: v.to(device) for k, v in repeat(text_conditions(dm, manager, ["a red circle"])[0], batch).items()}
    else:
        cond = {}
    return x, t, cond


def _best_ms(fn, repeats: int, sync) -> float:
    fn()  # warm-up (kernel selection, oneDNN primitives)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


@lazy.no_grad
def measure(manager, key: str, batch: int = 4, repeats: int = 3, again: bool = False) -> PrecisionTiming:
    """Time ``key``'s denoiser forward in fp32 and under autocast to the device's reduced precision
    (batch ``batch``, best of ``repeats`` after a warm-up) on the manager's device; kept per process."""
    device = torch.device(manager.device)
    with _LOCK:
        if not again and (key, device.type) in _CACHE:
            return _CACHE[(key, device.type)]
    name = REDUCED.get(device.type, "bf16")
    reduced = getattr(torch, AUTOCAST_DTYPES[name])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with manager.use(key) as lent:
        dm = dataclasses.replace(lent, precision="fp32") if isinstance(lent, DiffusionModel) else lent
        x, t, cond = _inputs(dm, manager, batch, device)
        full = lambda: dm.model_fn(x, t, cond)

        def low():
            with torch.autocast(device.type, dtype=reduced):
                return dm.model_fn(x, t, cond)

        ref, out = full().float(), low().float()
        fp32_ms, reduced_ms = _best_ms(full, repeats, sync), _best_ms(low, repeats, sync)
        recorded = lent.info.get("reduced_precision")
    choice, why = choose(fp32_ms / reduced_ms, name, recorded)
    timing = PrecisionTiming(key, device.type, batch, round(fp32_ms, 2), name, round(reduced_ms, 2),
                             round(float((ref - out).abs().max() / ref.std().clamp_min(1e-12)), 4), choice, why)
    with _LOCK:
        _CACHE.pop((key, device.type), None)  # a timing taken again moves to the end (the order taken)
        _CACHE[(key, device.type)] = timing
    return timing


def measured() -> list[PrecisionTiming]:
    """Every timing taken in this process, in the order taken."""
    with _LOCK:
        return list(_CACHE.values())


def honours(obj) -> bool:
    """Whether ``obj`` is a denoiser whose ``model_fn`` follows :attr:`DiffusionModel.precision`."""
    return isinstance(obj, DiffusionModel) and type(obj).model_fn is DiffusionModel.model_fn


def apply(manager, key: str, obj) -> str:
    """Set the just-loaded ``obj``'s precision by the rule; returns it. Timed only where the entry records
    its quality in this device's reduced precision (else fp32 at no cost)."""
    device = torch.device(manager.device)
    name = REDUCED.get(device.type, "bf16")
    if not honours(obj) or not (obj.info.get("reduced_precision") or {}).get(name):
        return "fp32"
    obj.precision = measure(manager, key).choice
    return obj.precision
