"""``studio train <model> --gaussian-stats``: the Gaussian model of a zoo diffusion model's training
data, for analytical teleportation and the Gaussian-score diagnostic (Wang & Vastola, TMLR 2024;
:mod:`studio.core.gaussian`). Written beside the entry as ``gaussian.safetensors`` and recorded in
the MANIFEST.

* ``digits-cond``: the 1,437 training digits, 256-d pixel space in model range, full rank.
* ``shapes-t2i``: ``SHAPES_SAMPLES`` scenes drawn as its recipe draws them (1 to 3 objects, no scene
  holding a held-out pair), 3 x 32 x 32 in model range; the top ``SHAPES_RANK`` directions plus an
  isotropic residual (the rest's mean variance), so the file stays small.

Deterministic: the same scenes from the same seed on every machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from studio.core.gaussian import fit
from studio.core.loading import GAUSSIAN_FILE as FILE
from studio.train.common import ZOO_DIR, machine_description, write_manifest_entry

SHAPES_SAMPLES, SHAPES_RANK, SHAPES_SEED = 20000, 256, 22022
MODELS = ("digits-cond", "shapes-t2i")


def training_samples(name: str) -> tuple[torch.Tensor, str]:
    """The model's training data in model range, and a description of it."""
    if name == "digits-cond":
        from studio.data import digits

        train = digits.load("train")
        return torch.from_numpy(train.images), f"the {len(train.labels)} training digits"
    if name == "shapes-t2i":
        from studio.data import shapes

        rng = np.random.default_rng(SHAPES_SEED)
        scenes = [shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS) for _ in range(SHAPES_SAMPLES)]
        x = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
        return x, f"{SHAPES_SAMPLES} training-distribution scenes (seed {SHAPES_SEED})"
    raise ValueError(f"Gaussian statistics are made for {', '.join(MODELS)}, not {name!r}")


def write_stats(name: str) -> dict:
    t0 = time.perf_counter()
    x, source = training_samples(name)
    stats = fit(x, rank=SHAPES_RANK if name == "shapes-t2i" else None)
    stats.save(ZOO_DIR / name / FILE)
    share = float(stats.eigvals.sum() / (stats.eigvals.sum() + stats.residual * (stats.dim - len(stats.eigvals))))
    info = {"samples": source, "rank": len(stats.eigvals), "residual_variance": round(stats.residual, 6),
            "variance_in_rank": round(share, 4), "seconds": round(time.perf_counter() - t0, 1),
            "machine": machine_description()}
    write_manifest_entry(name, {"gaussian_stats": info})
    return {"name": name, "file": FILE, **info}

