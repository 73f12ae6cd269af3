"""Watching a digits diffusion model while it trains (issue 23's Train tab and ``benchmarks/bench_train.py``):
every few steps the EMA weights draw a fixed-seed sample, which the studio's *judges* read.

* **judge accuracy**: how often ``judge-digits`` reads the class that was asked for (bootstrap 95% interval);
* **FD-digits**: the Fréchet distance of ``fd-digits`` features between the sample and the 360 held-out test
  digits (a toy-scale figure, not FID), with a bootstrap interval;
* a grid of the first images (``samples.png`` and ``samples-<step>.png`` in the run's folder).

Neither judge was trained by, or for, the model being watched. The sample is the same at every evaluation
(image i from seed ``seed + i``, classes 0..9 in turn), conditional at guidance 1 (one network pass a step),
with the model's own sampler family: DDIM for the DDPM objectives, FlowMatch Euler for rectified flow.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from studio.core import guidance as G
from studio.core import metrics
from studio.core.models import DiffusionModel
from studio.core.results import to_grid
from studio.core.sampling import make_scheduler, run_to_end, sample_images
from studio.data import digits

SAMPLES_FILE = "samples.png"
GRID_PER_CLASS = 4  # rows of the sample grid (one column per class)
WATCH_SEED = 90_000  # image i of every evaluation starts from seed WATCH_SEED + i


def sampler_for(prediction_type: str) -> str:
    return "flow-euler" if prediction_type == "flow" else "ddim"


def grid_png(images: torch.Tensor, path: Path, rows: int = GRID_PER_CLASS, scale: int = 3) -> None:
    """Images (N, 1, H, W) in [-1, 1], class i in column i % 10: the first ``rows`` full rows, upscaled."""
    rows = min(rows, len(images) // digits.NUM_CLASSES)
    grid = images[:rows * digits.NUM_CLASSES].reshape(rows, digits.NUM_CLASSES, *images.shape[1:])
    to_grid(grid, scale).save(path)


class DigitsWatch:
    """``watch(unet, scheduler, step, folder) -> {"fd_digits": ..., "judge_accuracy": ..., "eval_seconds": ...}``:
    the evaluator :func:`studio.train.diffusion.train` calls. ``n`` images (a multiple of 10 keeps the classes
    balanced) at ``steps`` sampler steps. ``keep``: also write each evaluation's FD features and the judge's
    hits to ``watch-<step>.npz`` (for paired comparisons across runs: image i has the same seed in every run)."""

    def __init__(self, n: int = 200, steps: int = 20, seed: int = WATCH_SEED, grid: bool = True, keep: bool = False):
        from studio.core.loading import load_zoo

        if n < 20:
            raise ValueError("the watch needs at least 20 images (two per class) for an FD")
        self.n, self.steps, self.seed, self.grid, self.keep = n, steps, seed, grid, keep
        self.judge, self.fdnet = load_zoo("judge-digits"), load_zoo("fd-digits")
        self.real = metrics.features(self.fdnet, torch.from_numpy(digits.load("test").images))
        self.labels = torch.arange(n) % digits.NUM_CLASSES

    @torch.no_grad()
    def images(self, unet: torch.nn.Module, scheduler) -> torch.Tensor:
        prediction = "flow" if "FlowMatch" in type(scheduler).__name__ else scheduler.config.prediction_type
        dm = DiffusionModel("watched", unet, dict(scheduler.config), prediction, "class")
        sched = make_scheduler(sampler_for(prediction), dm.scheduler_config, prediction)
        denoise = G.bind(dm.model_fn, {"class_labels": self.labels})
        return run_to_end(sample_images(dm, denoise, sched, [self.seed + i for i in range(self.n)],
                                        num_inference_steps=self.steps))

    @torch.no_grad()
    def __call__(self, unet: torch.nn.Module, scheduler, step: int, folder: Path) -> dict:
        began = time.perf_counter()
        x = self.images(unet, scheduler)
        feats = metrics.features(self.fdnet, x)
        fd = metrics.frechet_features(feats, self.real)
        acc = metrics.digits_accuracy(self.judge, x, self.labels.numpy())
        folder.mkdir(parents=True, exist_ok=True)
        if self.keep:
            hits = metrics.judge_reading(self.judge, x)[0] == self.labels.numpy()
            np.savez_compressed(folder / f"watch-{step}.npz", features=feats.astype(np.float32), hits=hits)
        if self.grid:
            grid_png(x, folder / f"samples-{step}.png")
            grid_png(x, folder / SAMPLES_FILE)
        return {"fd_digits": fd.to_dict(), "judge_accuracy": acc.to_dict(), "images": self.n,
                "eval_seconds": round(time.perf_counter() - began, 2)}
