"""The Gaussian model of a dataset and its exact diffusion (Wang & Vastola, "The Unreasonable
Effectiveness of Gaussian Score Approximation for Diffusion Models and its Applications", TMLR 2024;
official code ``Animadversio/GaussianTeleportationDiffusion``, ``gaussian_teleport/analytical_score_lib.py``).

For data ``x0 ~ N(mu, Sigma)`` with ``Sigma = U diag(lam) U^T`` (rank r, plus an isotropic
``residual`` variance on the rest of the space) and a variance-preserving forward process
``x_t = alpha_t x0 + sigma_t eps``, everything is closed form:

* the denoiser (posterior mean): ``E[x0 | x_t] = mu + U diag(alpha lam / (alpha^2 lam + sigma^2))
  U^T (x_t - alpha mu)`` (:func:`denoise`), and the score ``(alpha mu - x_t)`` over the noised
  covariance ``alpha^2 Sigma + sigma^2 I`` (:func:`score`);
* the probability-flow ODE's solution (:func:`pf_ode`): each eigen-direction is scaled by
  ``sqrt(sigma_s^2 + alpha_s^2 lam) / sqrt(sigma_t^2 + alpha_t^2 lam)`` and the mean follows
  ``alpha``. This is the official ``edm_x_t_traj`` (written there for the EDM / variance-exploding
  convention, ``x_s = mu + sum_k sqrt((s^2 + lam_k) / (s_T^2 + lam_k)) (u_k^T (x_T - mu)) u_k
  + (s / s_T) r``) rewritten for ``alpha, sigma``: divide by ``alpha`` and set ``s = sigma / alpha``
  to get the official formula back. Written this way it also holds at a zero-SNR start
  (``alpha_T = 0``), where the variance-exploding form divides by zero. The official residual
  ``r`` (outside the top eigenvectors) is scaled as if its variance were 0; here it carries the
  ``residual`` variance, which is 0 for a full-rank fit and then gives the official formula.

Pixel statistics are taken in model range ([-1, 1]), as the official code maps its [0, 1]
statistics (``mu * 2 - 1``, ``lam * 4``). A latent model's statistics are those of its latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class GaussianStats:
    """Mean (D,), top eigenvalues (r,) descending, their eigenvectors (D, r), the isotropic residual
    variance outside them, the image shape (C, H, W) and how many samples they came from."""

    mean: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor
    residual: float
    shape: tuple[int, ...]
    n_samples: int

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def to(self, device=None, dtype=None) -> "GaussianStats":
        move = lambda t: t.to(device=device, dtype=dtype)
        return GaussianStats(move(self.mean), move(self.eigvals), move(self.eigvecs), self.residual, self.shape,
                             self.n_samples)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({"mean": self.mean.contiguous(), "eigvals": self.eigvals.contiguous(),
                   "eigvecs": self.eigvecs.contiguous()}, str(path),
                  metadata={"residual": repr(float(self.residual)), "shape": ",".join(map(str, self.shape)),
                            "n_samples": str(self.n_samples)})

    @classmethod
    def load(cls, path: Path) -> "GaussianStats":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in ("mean", "eigvals", "eigvecs")}
        try:
            shape = tuple(int(v) for v in meta["shape"].split(","))
            residual, n = float(meta["residual"]), int(meta["n_samples"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{Path(path).name} is not a Gaussian statistics file (its metadata: {exc})") from None
        return cls(tensors["mean"], tensors["eigvals"], tensors["eigvecs"], residual, shape, n)


def fit(samples: torch.Tensor, rank: int | None = None) -> GaussianStats:
    """Mean and covariance of ``samples`` (N, *shape), in float64: the full eigendecomposition, or its
    top ``rank`` directions plus the mean variance of the rest as an isotropic residual."""
    x = samples.reshape(samples.shape[0], -1).double()
    n, d = x.shape
    if n < 2:
        raise ValueError("need at least two samples to fit a covariance")
    mean = x.mean(0)
    xc = x - mean
    vals, vecs = torch.linalg.eigh(xc.T @ xc / (n - 1))  # ascending
    return from_spectrum(mean, vals.flip(0).clamp(min=0), vecs.flip(1), rank, tuple(samples.shape[1:]), n)


def from_spectrum(mean: torch.Tensor, vals: torch.Tensor, vecs: torch.Tensor, rank: int | None,
                  shape: tuple[int, ...], n: int, floor: float = 0.0) -> GaussianStats:
    """:class:`GaussianStats` from a mean and the covariance's eigenvalues (descending) and eigenvectors (columns):
    the top ``rank``, the rest's mean variance over the whole space's remaining dimensions as the residual,
    ``floor`` added to every variance."""
    d = mean.numel()
    r = len(vals) if rank is None else min(rank, len(vals))
    rest = d - r
    residual = float(vals[r:].sum() / rest) if rest else 0.0
    return GaussianStats(mean.float(), (vals[:r] + floor).float(), vecs[:, :r].contiguous().float(),
                         residual + floor, shape, n)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _per_sample(v, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) noise-schedule value as (B, 1) against flattened ``x``."""
    return torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1)


def _scale_directions(stats: GaussianStats, x: torch.Tensor, eig_factor, residual_factor) -> torch.Tensor:
    """``U diag(eig_factor(lam)) U^T x + residual_factor(residual) (I - U U^T) x`` on flattened x."""
    coeff = x @ stats.eigvecs  # (B, r)
    inside = coeff @ stats.eigvecs.T
    return (eig_factor(stats.eigvals) * coeff) @ stats.eigvecs.T + residual_factor(stats.residual) * (x - inside)


def denoise(stats: GaussianStats, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The Gaussian posterior mean ``E[x0 | x_t]`` for ``x_t = alpha x0 + sigma eps`` (per-sample or
    scalar ``alpha``, ``sigma``)."""
    x = _flat(x_t)
    a, s = _per_sample(alpha, x), _per_sample(sigma, x)
    gain = lambda lam: a * lam / (a ** 2 * lam + s ** 2)
    out = stats.mean + _scale_directions(stats, x - a * stats.mean, gain, gain)
    return out.reshape(x_t.shape)


def score(stats: GaussianStats, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``grad log p_t(x_t)`` of the noised Gaussian: ``(alpha^2 Sigma + sigma^2 I)^{-1} (alpha mu - x_t)``."""
    x = _flat(x_t)
    a, s = _per_sample(alpha, x), _per_sample(sigma, x)
    inv = lambda lam: 1 / (a ** 2 * lam + s ** 2)
    return _scale_directions(stats, a * stats.mean - x, inv, inv).reshape(x_t.shape)


def pf_ode(stats: GaussianStats, x_t: torch.Tensor, alpha_t, sigma_t, alpha_s, sigma_s) -> torch.Tensor:
    """The probability-flow ODE carried exactly from ``(alpha_t, sigma_t)`` to ``(alpha_s, sigma_s)``
    (the official ``edm_x_t_traj`` in alpha / sigma form; see the module docstring)."""
    x = _flat(x_t)
    at, st, as_, ss = (_per_sample(v, x) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    ratio = lambda lam: torch.sqrt((ss ** 2 + as_ ** 2 * lam) / (st ** 2 + at ** 2 * lam))
    out = as_ * stats.mean + _scale_directions(stats, x - at * stats.mean, ratio, ratio)
    return out.reshape(x_t.shape)


def log_density(stats: GaussianStats, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``log N(x_t; alpha mu, alpha^2 Sigma + sigma^2 I)`` per sample (B,), in float64: the noised
    Gaussian's log-density (a mixture component's weight in :mod:`studio.core.analytic`)."""
    x = _flat(x_t).double()
    a, s = float(alpha), float(sigma)
    y = x - a * stats.mean.double()
    coeff = y @ stats.eigvecs.double()
    var_in = a * a * stats.eigvals.double() + s * s
    rest = stats.dim - len(stats.eigvals)
    quad = (coeff ** 2 / var_in).sum(1)
    logdet = torch.log(var_in).sum()
    if rest:
        var_out = a * a * stats.residual + s * s
        quad = quad + ((y ** 2).sum(1) - (coeff ** 2).sum(1)).clamp(min=0) / var_out
        logdet = logdet + rest * torch.log(torch.tensor(var_out, dtype=torch.float64))
    return -0.5 * (quad + logdet + stats.dim * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64)))

