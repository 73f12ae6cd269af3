"""Digits tasks: the datasets a zoo of small classifiers is trained on (the Weights tab, D2NWG, p-diff).

A task is the digits (:mod:`studio.data.digits`, fixed train/test split) seen through one
transformation: a stroke style (plain, thick: a 3 x 3 max filter, thin: a 3 x 3 min filter), then
a rotation (bilinear, background kept black), then pixel noise (Gaussian, fixed per image and task,
clipped to [-1, 1]); optionally only some classes. Each transformation is deterministic, so a task
is the same data on every machine.

The grid: 8 rotations x 3 styles x 2 noise levels (48 tasks, all ten classes) + 4 class-subset
tasks. :data:`SELECTION` (2 tasks) and :data:`HELD_OUT` (6 tasks) are never seen by a generator:
the selection tasks choose settings (fine-tuning rate, steps), the held-out tasks report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from studio.data import digits

ROTATIONS = (0, 45, 90, 135, 180, 225, 270, 315)  # degrees, counter-clockwise
STYLES = ("plain", "thick", "thin")
NOISE = (0.0, 0.5)  # std of the pixel noise, in the [-1, 1] range
NOISE_SEED = 7_100


@dataclass(frozen=True)
class Task:
    rotation: int = 0
    style: str = "plain"
    noise: float = 0.0
    classes: tuple[int, ...] = tuple(range(10))

    @property
    def id(self) -> str:
        """A short, stable identifier, e.g. ``rot45-thick-noisy`` or ``rot0-plain-clean-0to4``."""
        base = f"rot{self.rotation}-{self.style}-{'noisy' if self.noise else 'clean'}"
        if self.classes != tuple(range(10)):
            base += f"-{self.classes[0]}to{self.classes[-1]}"
        return base

    @property
    def title(self) -> str:
        """How the tab names it: 'rotated 45 degrees, thick strokes, noisy'."""
        parts = [f"rotated {self.rotation}\N{DEGREE SIGN}" if self.rotation else "upright",
                 {"plain": "plain strokes", "thick": "thick strokes", "thin": "thin strokes"}[self.style],
                 "noisy" if self.noise else "clean"]
        if self.classes != tuple(range(10)):
            parts.append(f"digits {self.classes[0]}-{self.classes[-1]} only")
        return ", ".join(parts)


GRID = tuple(Task(r, s, n) for r in ROTATIONS for s in STYLES for n in NOISE)
SUBSETS = (Task(0, "plain", 0.0, (0, 1, 2, 3, 4)), Task(0, "plain", 0.0, (5, 6, 7, 8, 9)),
           Task(180, "plain", 0.0, (0, 1, 2, 3, 4)), Task(90, "thick", 0.0, (5, 6, 7, 8, 9)))
ALL = GRID + SUBSETS
# never in a generator's training data; each has neighbours in the grid on every axis
SELECTION = (Task(135, "plain", 0.0), Task(270, "thin", 0.5))
HELD_OUT = (Task(45, "thick", 0.0), Task(90, "thin", 0.5), Task(180, "plain", 0.5),
            Task(225, "thick", 0.5), Task(315, "plain", 0.0), Task(0, "thin", 0.0))
SEEN = tuple(t for t in ALL if t not in SELECTION + HELD_OUT)
BY_ID = {t.id: t for t in ALL}


def task(task_id: str) -> Task:
    """The task named ``task_id``; a ValueError listing a few known ones otherwise."""
    if task_id not in BY_ID:
        raise ValueError(f"unknown digits task {task_id!r}; known ids look like {', '.join(t.id for t in ALL[:3])}")
    return BY_ID[task_id]


def split_of(t: Task) -> str:
    """'seen', 'selection' or 'held-out': which side of the generators' training data ``t`` is on."""
    return "selection" if t in SELECTION else "held-out" if t in HELD_OUT else "seen"


def _style(x, style: str):
    import torch.nn.functional as F

    if style == "thick":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    if style == "thin":
        return -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x


def _rotate(x, degrees: int):
    import torch
    import torch.nn.functional as F

    if degrees % 360 == 0:
        return x
    if degrees % 90 == 0:  # exact for quarter turns
        return torch.rot90(x, k=degrees // 90, dims=(2, 3))
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def transform(images: np.ndarray, t: Task, noise_seed: int) -> np.ndarray:
    """(N, 1, 16, 16) digits in [-1, 1] as task ``t`` sees them (style, rotation, noise)."""
    import torch

    x = _rotate(_style(torch.from_numpy(np.asarray(images, dtype=np.float32)), t.style), t.rotation)
    if t.noise:
        gen = torch.Generator().manual_seed(noise_seed)
        x = (x + t.noise * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    return x.numpy().astype(np.float32)


@lru_cache(maxsize=128)
def data(task_id: str, split: str = "train") -> digits.DigitsSplit:
    """Task ``task_id``'s images and labels of the digits ``split`` (only its classes)."""
    t = task(task_id)
    base = digits.load(split)
    keep = np.isin(base.labels, t.classes)
    seed = NOISE_SEED + 1000 * ALL.index(t) + (0 if split == "train" else 1)
    return digits.DigitsSplit(transform(base.images[keep], t, seed), base.labels[keep])


def support(task_id: str, per_class: int = 5, seed: int = 0) -> digits.DigitsSplit:
    """A few labelled training examples of the task: ``per_class`` of each of its classes, drawn by ``seed``."""
    d = data(task_id, "train")
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(d.labels == c), per_class, replace=False)
                             for c in task(task_id).classes])
    return digits.DigitsSplit(d.images[picked], d.labels[picked])
