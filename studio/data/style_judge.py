"""An independent style judge for Tune (PSO): thick vs thin strokes, never trained on the thickness measure.

The reward and style rate of Tune use :func:`studio.data.digits.thickness` (``2 x ink area / ink
perimeter`` of the binarised digit). A model tuned with that number as its reward can learn what the
formula likes rather than thicker strokes, so the benchmark also scores every row with this judge: a
logistic regression on the 256 grey pixels, trained on the *training* split's real digits whose strokes
were made thicker (grey dilation, a 3 x 3 max filter) or thinner (grey erosion, a 3 x 3 min filter),
each by a random amount ``a`` in [0.5, 1] (``x + a (dilate(x) - x)``). Its labels come from those
operations, not from the thickness formula, and it reads grey levels, not a binarised outline.

"Called thick" means a judge score at or above the training digits' 80th percentile (the same
convention as :func:`studio.data.digits.on_style`), so about a fifth of real digits are called thick.
:func:`validation` measures, on the 360 held-out test digits: the accuracy on their dilated vs eroded
versions, the share called thick (as is, dilated, eroded), how well the score separates the test
digits the thickness measure calls thick from those it calls thin (ROC AUC), and how often the two
measures agree.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from studio.data import digits

JUDGE_SEED = 0
JUDGE_C = 0.1  # the logistic regression's inverse L2 strength
PERCENTILE = 80.0


def erode(x):
    """Thin strokes by one pixel (3 x 3 min filter): dilation's opposite."""
    import torch.nn.functional as F

    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def variants(x, seed: int):
    """Each digit made thicker and thinner by a random amount in [0.5, 1] of a one-pixel dilation /
    erosion: ((2N, 256) pixels, labels 1 = thick, 0 = thin)."""
    import torch

    x = torch.as_tensor(x).float()
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.5 + 0.5
    b = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.5 + 0.5
    both = torch.cat([x + a * (digits.dilate(x) - x), x + b * (erode(x) - x)])
    return both.flatten(1).numpy(), np.r_[np.ones(len(x)), np.zeros(len(x))]


@lru_cache(maxsize=1)
def judge():
    """The fitted classifier (deterministic; under a second on one core)."""
    from sklearn.linear_model import LogisticRegression

    features, labels = variants(digits.load("train").images, JUDGE_SEED)
    return LogisticRegression(C=JUDGE_C, max_iter=5000).fit(features, labels)


def score(x) -> np.ndarray:
    """The judge's thick-vs-thin log-odds of each (N, 1, 16, 16) image in [-1, 1] (higher: thicker)."""
    import torch

    return judge().decision_function(torch.as_tensor(x).detach().float().cpu().flatten(1).numpy())


@lru_cache(maxsize=1)
def threshold() -> float:
    """The training digits' 80th percentile of :func:`score`."""
    return float(np.percentile(score(digits.load("train").images), PERCENTILE))


def called_thick(x) -> np.ndarray:
    """Whether the judge calls each image thick (score at or above :func:`threshold`)."""
    return score(x) >= threshold()


@lru_cache(maxsize=1)
def thin_threshold() -> float:
    """The training digits' 20th percentile of :func:`score`."""
    return float(np.percentile(score(digits.load("train").images), 100 - PERCENTILE))


def called(x, style: str) -> np.ndarray:
    """Whether the judge calls each image on ``style``: thick (at or above the 80th percentile) or
    thin (at or below the 20th)."""
    return called_thick(x) if style == "thick" else score(x) <= thin_threshold()


def validation() -> dict:
    """The judge on the held-out test digits (see the module's docstring)."""
    import torch
    from sklearn.metrics import roc_auc_score

    test = torch.from_numpy(digits.load("test").images)
    features, labels = variants(test, JUDGE_SEED + 1)
    s = score(test)
    thick, thin = digits.on_style(test, "thick"), digits.on_style(test, "thin")
    both = thick | thin
    calls = s >= threshold()
    return {
        "heldout_dilated_vs_eroded_accuracy": float((judge().predict(features) == labels).mean()),
        "n_heldout": len(test),
        "test_called_thick": float(calls.mean()),
        "test_dilated_called_thick": float(called_thick(digits.dilate(test)).mean()),
        "test_eroded_called_thick": float(called_thick(erode(test)).mean()),
        "auc_vs_thickness_measure": float(roc_auc_score(thick[both], s[both])),
        "agreement_with_thickness_measure": float((calls == thick).mean()),
        "threshold": threshold(),
    }
