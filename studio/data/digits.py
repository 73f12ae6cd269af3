"""Digits: scikit-learn's ``load_digits`` (1,797 real 8 x 8 handwritten digits, offline).

Images are upsampled to 16 x 16 (bilinear, ``align_corners=False``) and mapped from the
dataset's 0..16 ink scale to [-1, 1] (background -1). The split is fixed and documented:
stratified by class, ``sklearn.model_selection.train_test_split(test_size=360,
random_state=0)``, giving 1,437 training and 360 test images.

The stroke-thickness style measure and the bundled style sets (Tune's targets) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 16
NUM_CLASSES = 10
TEST_SIZE = 360
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    images: np.ndarray  # (N, 1, 16, 16) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64 in 0..9


def upsample(images8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 1, 16, 16) float32 in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images8, dtype=np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).numpy()


@lru_cache(maxsize=1)
def _splits() -> tuple[DigitsSplit, DigitsSplit]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.images, d.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=d.target
    )
    return (DigitsSplit(upsample(x_tr), y_tr.astype(np.int64)),
            DigitsSplit(upsample(x_te), y_te.astype(np.int64)))


def load(split: str = "train") -> DigitsSplit:
    """The fixed ``"train"`` (1,437) or ``"test"`` (360) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _splits()[0 if split == "train" else 1]


# ----------------------------------------------------------------------------- the style measure
# A digit's stroke thickness is ``2 x ink area / ink perimeter`` (a stroke of length L and width w
# has area L w and perimeter about 2 L), ink being pixels above mid-grey. "On-style" means beyond
# the training digits' 80th (thick) or below their 20th (thin) percentile. Validated on real digits
# (tests/test_tune.py, benchmarks/bench_pso.py): about 20% of test digits are on-style, and nearly
# all once dilated. Tune (PSO) tunes towards these styles and measures with them.

STYLE_SETS = {"thick": "the 16 thickest-stroke training digits (at most 2 per class)",
              "thin": "the 16 thinnest-stroke training digits (at most 2 per class)",
              "thick-0-4": "the 15 thickest-stroke training digits of classes 0-4 (3 per class; "
                           "digits 5-9 are left out, to measure forgetting on them)"}
PERCENTILE = {"thick": 80.0, "thin": 20.0}
SET_CLASSES = {"thick-0-4": (0, 1, 2, 3, 4)}  # a set limited to some classes, and its per-class cap
SET_PER_CLASS = {"thick-0-4": 3}


def set_style(name: str) -> str:
    """The style a bundled set shows ("thick" or "thin")."""
    return name.split("-", 1)[0]


def thickness(x) -> np.ndarray:
    """Stroke thickness ``2 A / P`` of each (N, 1, H, W) image in [-1, 1] (ink: pixels > 0), in pixels."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(x).detach().float().cpu()
    ink = (x[:, 0] > 0).float()
    padded = F.pad(ink, (1, 1, 1, 1))
    area = ink.flatten(1).sum(1)
    perimeter = ((padded[:, 1:, :] - padded[:, :-1, :]).abs().flatten(1).sum(1)
                 + (padded[:, :, 1:] - padded[:, :, :-1]).abs().flatten(1).sum(1))
    return (2 * area / perimeter.clamp(min=1)).numpy()


@lru_cache(maxsize=None)
def style_threshold(style: str) -> float:
    """The training digits' 80th (thick) or 20th (thin) percentile of :func:`thickness`."""
    return float(np.percentile(thickness(load("train").images), PERCENTILE[style]))


def on_style(x, style: str) -> np.ndarray:
    """Whether each image is on-style (beyond the training digits' percentile for ``style``)."""
    t = thickness(x)
    return t >= style_threshold(style) if style == "thick" else t <= style_threshold(style)


def style_set(style: str, n: int = 16, per_class: int = 2) -> tuple[torch.Tensor, list[int]]:
    """A bundled target set: the ``n`` most on-style training digits, at most ``per_class`` of each
    class, as ((n, 1, 16, 16) float tensor in [-1, 1], their labels)."""
    import torch

    from studio.errors import UserError

    if style not in STYLE_SETS:
        raise UserError(f"unknown style set {style!r}; choose one of {', '.join(STYLE_SETS)}")
    train = load("train")
    score = thickness(train.images)
    classes = SET_CLASSES.get(style, tuple(range(10)))
    per_class = SET_PER_CLASS.get(style, per_class)
    order = np.argsort(-score if set_style(style) == "thick" else score, kind="stable")
    picked, count = [], {}
    for i in order:
        c = int(train.labels[i])
        if c in classes and count.get(c, 0) < per_class:
            picked.append(i)
            count[c] = count.get(c, 0) + 1
        if len(picked) == n:
            break
    return torch.from_numpy(train.images[picked]).float(), [int(train.labels[i]) for i in picked]


def dilate(x: torch.Tensor) -> torch.Tensor:
    """Thicken strokes by one pixel (3 x 3 max filter): the style measure's validation."""
    import torch.nn.functional as F

    return F.max_pool2d(x, 3, stride=1, padding=1)
