"""Closed-form denoisers a learned one is held against, and the explained-variance measure of Wang &
Vastola ("The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models and its
Applications", TMLR 2024; official ``analysis/EDM_GMM_score_cmp_mass_CLI.py`` and
``core/analytical_score_lib.py``).

The references, from simplest to the data itself (each a denoiser ``D(x_t) ~ E[x0 | x_t]`` for
``x_t = alpha x0 + sigma eps``):

* ``mean``: ``D = mu``, the official "mean isotropic" score ``(alpha mu - x) / sigma^2``: what any
  denoiser explains for free at high noise;
* ``gaussian``: the data's mean and covariance (:func:`studio.core.gaussian.denoise`);
* ``gmm-k``: k Gaussians, one per k-means cluster of the training set with its own mean and
  covariance (plus ``floor`` = the official ``lambda_EPS`` 1e-5 on the eigenvalues), weighted by
  cluster size; the posterior over clusters is exact (:func:`mixture_denoise`);
* ``delta``: the training set itself, an equal mixture of point masses; its denoiser is the
  softmax-weighted mean of the training images (the official ``delta_GMM_score``): what a model
  that memorised its data would do.

:func:`explained_variance` is the official ``explained_var_vec``: per sample,
``1 - |a - b|^2 / |a|^2`` with ``a`` the learned model's output, uncentred, averaged over samples.
The official script reports it for the score (``St_EV``) and for the denoiser (``Dt_EV``);
:func:`explain` does both. In score space the common ``-x / sigma^2`` term is part of both vectors,
which is why even ``mean`` scores high there at high noise: read a reference against ``mean``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from studio.core import gaussian as G
from studio.core.gaussian import GaussianStats
from studio.core.metrics import bootstrap_mean

Denoiser = Callable[[torch.Tensor, float, float], torch.Tensor]  # (x_t, alpha, sigma) -> x0_hat
LAMBDA_EPS = 1e-5  # the official floor on a cluster's eigenvalues


@dataclass
class Mixture:
    """Gaussian components (:class:`GaussianStats`) and their weights (summing to 1)."""

    components: list[GaussianStats]
    weights: torch.Tensor


def fit_svd(samples: torch.Tensor, rank: int | None = None, floor: float = 0.0) -> GaussianStats:
    """:func:`studio.core.gaussian.fit` through the SVD of the centred samples: the same statistics, cheap
    when there are fewer samples than dimensions (a cluster of 3,072-d images)."""
    x = samples.reshape(samples.shape[0], -1).double()
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two samples to fit a covariance")
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    return G.from_spectrum(mean, s ** 2 / (n - 1), vt.T, rank, tuple(samples.shape[1:]), n, floor)


def fit_mixture(samples: torch.Tensor, n_clusters: int, rank: int | None = None, seed: int = 42,
                floor: float = LAMBDA_EPS) -> Mixture:
    """k-means clusters of ``samples`` (scikit-learn, seeded as the official ``kmeans_random_seed``), each
    fitted by :func:`fit_svd`; weights are the clusters' shares."""
    from sklearn.cluster import KMeans

    flat = samples.reshape(samples.shape[0], -1)
    labels = KMeans(n_clusters, random_state=seed, n_init=3).fit_predict(flat.double().numpy())
    labels = torch.as_tensor(labels)
    comps, counts = [], []
    for k in range(n_clusters):
        members = samples[labels == k]
        if len(members) >= 2:
            comps.append(fit_svd(members, rank, floor))
            counts.append(len(members))
    w = torch.tensor(counts, dtype=torch.float64)
    return Mixture(comps, w / w.sum())


def mixture_denoise(mix: Mixture, x_t: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """``sum_k p(k | x_t) E[x0 | x_t, k]`` with exact responsibilities."""
    logp = torch.stack([G.log_density(c, x_t, alpha, sigma) for c in mix.components], 1) + torch.log(mix.weights)
    r = torch.softmax(logp, 1).to(x_t.dtype)
    out = sum(r[:, k].reshape(-1, *([1] * (x_t.dim() - 1))) * G.denoise(c, x_t, alpha, sigma)
              for k, c in enumerate(mix.components))
    return out


def delta_denoise(train: torch.Tensor, x_t: torch.Tensor, alpha: float, sigma: float, chunk: int = 4096) -> torch.Tensor:
    """The training set's own denoiser: ``sum_i softmax_i(-|x_t - alpha x_i|^2 / 2 sigma^2) x_i``."""
    flat = train.reshape(train.shape[0], -1)
    x = x_t.reshape(x_t.shape[0], -1)
    logits = torch.cat([-(torch.cdist(x.double(), alpha * part.double()) ** 2) / (2 * sigma * sigma)
                        for part in flat.split(chunk)], 1)
    return (torch.softmax(logits, 1).to(flat.dtype) @ flat).reshape(x_t.shape)


def explained_variance(learned: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The official ``explained_var_vec``: per sample ``1 - |learned - reference|^2 / |learned|^2``."""
    a, b = learned.reshape(learned.shape[0], -1).double(), reference.reshape(reference.shape[0], -1).double()
    return 1 - ((a - b) ** 2).sum(1) / (a ** 2).sum(1)


@torch.no_grad()
def explain(denoiser: Callable[[torch.Tensor, int], torch.Tensor], references: dict[str, Denoiser], x0: torch.Tensor,
            abar: torch.Tensor, timesteps, seed: int = 0) -> list[dict]:
    """Per timestep and reference, how much of a learned denoiser ``denoiser(x_t, t) -> x0_hat`` the
    reference explains, in score space (``score``, the paper's plot) and in denoiser space (``denoiser``),
    each a mean over samples with a 95% bootstrap interval. ``x0`` (N, *shape) are noised once per
    timestep with one seeded noise per sample (the same noise at every t)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for t in timesteps:
        a, s = float(abar[int(t)]) ** 0.5, float(1 - abar[int(t)]) ** 0.5
        x_t = a * x0 + s * eps
        learned = denoiser(x_t, int(t)).to(x0.dtype)
        row = {"t": int(t), "alpha": a, "sigma": s, "sigma_over_alpha": s / a}
        for name, ref in references.items():
            d = ref(x_t, a, s).to(x0.dtype)
            for space, (l, r) in {"score": (a * learned - x_t, a * d - x_t), "denoiser": (learned, d)}.items():
                est = bootstrap_mean(explained_variance(l, r).numpy(), n_boot=500)
                row[f"{name}/{space}"] = [est.value, est.low, est.high]
        rows.append(row)
    return rows


def explained_from(rows: list[dict], ref: str, threshold: float = 0.9, space: str = "score") -> dict | None:
    """The lowest timestep of :func:`explain`'s ``rows`` from which on (every larger one too) ``ref`` explains at
    least ``threshold`` of the learned ``space`` (``{"t", "sigma_over_alpha"}``), or None."""
    best = None
    for row in sorted(rows, key=lambda r: -r["t"]):
        if row[f"{ref}/{space}"][0] < threshold:
            break
        best = {"t": row["t"], "sigma_over_alpha": round(row["sigma_over_alpha"], 4)}
    return best


def references_for(stats: GaussianStats, train: torch.Tensor, clusters: tuple[int, ...] = (10,),
                   rank: int | None = None, seed: int = 42) -> dict[str, Denoiser]:
    """The references of the module docstring for a training set ``train`` (N, *shape) and its Gaussian."""
    refs: dict[str, Denoiser] = {
        "mean": lambda x, a, s: stats.mean.reshape(1, *x.shape[1:]).expand_as(x).to(x.dtype),
        "gaussian": lambda x, a, s: G.denoise(stats, x, a, s),
    }
    for k in clusters:
        mix = fit_mixture(train, k, rank, seed)
        refs[f"gmm-{k}"] = lambda x, a, s, mix=mix: mixture_denoise(mix, x, a, s)
    refs["delta"] = lambda x, a, s: delta_denoise(train, x, a, s)
    return refs
