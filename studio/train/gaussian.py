"""``studio train <model> --gaussian-stats``: the Gaussian model of a zoo diffusion model's training
data, for analytical teleportation and the Gaussian-score diagnostic (Wang & Vastola, TMLR 2024;
:mod:`studio.core.gaussian`). Written beside the entry as ``gaussian.safetensors`` and recorded in
the MANIFEST.

* ``digits-cond``: the 1,437 training digits, 256-d pixel space in model range, full rank.
* ``shapes-t2i``: ``SHAPES_SAMPLES`` scenes drawn as its recipe draws them (1 to 3 objects, no scene
  holding a held-out pair), 3 x 32 x 32 in model range; the top ``SHAPES_RANK`` directions plus an
  isotropic residual (the rest's mean variance), so the file stays small.

Deterministic: the same scenes from the same seed on every machine.

Any other diffusion model folder (a diffusers pipeline or UNet + scheduler folder): the statistics of
a folder of images the user gives, in the model's own space (a latent model's VAE latents, the
posterior means it trains on), written beside its weights (:func:`folder_stats`,
``studio train MODEL_FOLDER --gaussian-stats --images IMAGE_FOLDER``); the loader picks them up.
"""

from __future__ import annotations

import time
from pathlib import Path

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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FOLDER_RANK = 256


def folder_images(images: Path, shape: tuple[int, int, int], limit: int) -> torch.Tensor:
    """Up to ``limit`` images of a folder (sorted by name), each scaled on its shorter side and centre-cropped
    to ``shape`` = (C, H, W), in [-1, 1]. Unreadable files are skipped with their names reported."""
    from PIL import Image

    from studio.data.drawings import DrawingError, open_image

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    c, h, w = shape
    out, skipped = [], []
    for path in files:
        try:
            img, _ = open_image(path)
        except DrawingError as exc:
            skipped.append(f"{path.name} ({exc})")
            continue
        img = img.convert("L" if c == 1 else "RGB")
        scale = max(h / img.height, w / img.width)
        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.BICUBIC)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        arr = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32) / 127.5 - 1
        out.append(torch.from_numpy(arr.reshape(h, w, c).transpose(2, 0, 1).copy()))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    if len(out) < 2:
        raise ValueError(f"{Path(images).name} holds {len(out)} readable image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                         "the statistics need at least two")
    return torch.stack(out)


def folder_stats(model_folder: Path, images: Path, rank: int = FOLDER_RANK, limit: int = 5000) -> dict:
    """The Gaussian statistics of a folder of images in a diffusion model's space, written beside the model
    (``model_folder/gaussian.safetensors``). Latent models: the images go through the VAE encoder."""
    from studio.core.analytic import fit_svd
    from studio.core.loading import load_folder
    from studio.core.models import DiffusionModel

    t0 = time.perf_counter()
    dm = load_folder(Path(model_folder))
    if not isinstance(dm, DiffusionModel):
        raise ValueError(f"{Path(model_folder).name} is not a diffusion model folder the studio can sample")
    x = folder_images(images, dm.image_shape, limit)
    with torch.no_grad():
        z = torch.cat([dm.encode(part) for part in x.split(32)])
    stats = fit_svd(z, rank=min(rank, z[0].numel()))
    stats.save(Path(model_folder) / FILE)
    return {"model": Path(model_folder).name, "file": FILE, "images": len(x), "shape": list(stats.shape),
            "rank": len(stats.eigvals), "residual_variance": round(stats.residual, 6),
            "seconds": round(time.perf_counter() - t0, 1)}


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

