"""Digits: scikit-learn's ``load_digits`` (1,797 real 8 x 8 handwritten digits, offline).

Images are upsampled to 16 x 16 (bilinear, ``align_corners=False``) and mapped from the
dataset's 0..16 ink scale to [-1, 1] (background -1). The split is fixed and documented:
stratified by class, ``sklearn.model_selection.train_test_split(test_size=360,
random_state=0)``, giving 1,437 training and 360 test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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
