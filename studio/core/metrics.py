"""Measuring: judge accuracy and Frechet distance on the zoo feature nets, with bootstrap intervals.

The Frechet distance here is computed on the zoo's own small feature networks (``fd-digits``,
``fd-shapes``), so it is called **FD-digits / FD-shapes**, never FID: the numbers are not
comparable with Inception-based FIDs in papers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import linalg


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # bootstrap percentile interval
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bootstrap_mean(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``values`` (e.g. 0/1 judge hits) with a percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to average")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return Estimate(float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(v.size))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau; the FID formula)."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_features(features_a: np.ndarray, features_b: np.ndarray, n_boot: int = 200, seed: int = 0,
                     level: float = 0.95) -> Estimate:
    """FD between two feature sets, with a bias-corrected bootstrap interval.

    Resampling with replacement repeats points, which inflates a Frechet distance (the plain
    percentile interval of a good generator can lie wholly above its point estimate). So the
    bootstrap distribution (both sets resampled) is shifted to have the point estimate as its
    mean before its percentiles are read, and the lower end is clipped at 0.
    """
    value = frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        a = features_a[rng.integers(0, len(features_a), len(features_a))]
        b = features_b[rng.integers(0, len(features_b), len(features_b))]
        boots.append(frechet_distance(*gaussian_stats(a), *gaussian_stats(b)))
    boots = np.asarray(boots) - (np.mean(boots) - value)
    q = (1 - level) / 2
    return Estimate(value, max(0.0, float(np.quantile(boots, q))), float(np.quantile(boots, 1 - q)),
                    min(len(features_a), len(features_b)))


@torch.no_grad()
def features(net: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Feature-net features of (N, C, H, W) images in [-1, 1]."""
    net.eval()
    return torch.cat([net.features(images[i:i + batch].float()) for i in range(0, len(images), batch)]).cpu().numpy()


def frechet(net: torch.nn.Module, images_a: torch.Tensor, images_b: torch.Tensor, n_boot: int = 200) -> Estimate:
    """FD-<domain> between two image sets on the feature net ``net`` (e.g. zoo ``fd-digits``)."""
    return frechet_features(features(net, images_a), features(net, images_b), n_boot=n_boot)


@torch.no_grad()
def digits_accuracy(judge: torch.nn.Module, images: torch.Tensor, labels) -> Estimate:
    """Share of images the digits judge reads as the asked class."""
    judge.eval()
    pred = judge(images.float()).argmax(-1).cpu().numpy()
    return bootstrap_mean(pred == np.asarray(labels))


@torch.no_grad()
def shapes_concept_hits(judge: torch.nn.Module, images: torch.Tensor, concepts: list[dict]) -> dict[str, np.ndarray]:
    """Per image: does the judge find the asked concept? ``concepts[i]`` = {shape, colour, region}.

    Returns 0/1 arrays: ``shape_colour`` (an object of that shape and colour anywhere) and
    ``all`` (an object with every asked attribute, the region included).
    """
    from studio.nets.judges import concept_present

    judge.eval()
    s_cells, c_cells = judge.read(images.float())
    out = {"shape_colour": [], "all": []}
    for i, c in enumerate(concepts):
        si, ci = s_cells[i:i + 1], c_cells[i:i + 1]
        out["shape_colour"].append(bool(concept_present(si, ci, c.get("shape"), c.get("colour"), None)))
        out["all"].append(bool(concept_present(si, ci, c.get("shape"), c.get("colour"), c.get("region"))))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
