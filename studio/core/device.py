"""Device and dtype choice, and seeded generators.

Noise is always drawn from a **CPU** ``torch.Generator`` and then moved to the device, so the
same seed gives the same image on every machine (CUDA and CPU random streams differ).
"""

from __future__ import annotations

import os
import random

from studio import lazy

torch = lazy.load("torch")

MAX_SEED = 2**32 - 1


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` (or ``$STUDIO_DEVICE``) if given, else cuda, then mps, then cpu."""
    name = prefer or os.environ.get("STUDIO_DEVICE")
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {name!r} asked for, but MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, prefer: str | None = None) -> torch.dtype:
    """fp16 on CUDA/MPS (bf16 where the GPU supports it), fp32 on CPU; ``prefer`` overrides."""
    if prefer:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prefer]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (0 .. 2**32 - 1)."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    return torch.Generator("cpu").manual_seed(int(seed))


def random_seed() -> int:
    """A fresh seed to show the user, so the run can be repeated."""
    return random.SystemRandom().randint(0, MAX_SEED)


def set_threads(n: int | None = None) -> None:
    """Use ``n`` (default: all) CPU threads for intra-op work."""
    torch.set_num_threads(n or os.cpu_count() or 1)
