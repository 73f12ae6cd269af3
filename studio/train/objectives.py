"""Training objectives as switches of one recipe (issue 23): the path, what the network predicts, and how
the noise level of each training example is drawn.

* **DDPM** (variance preserving, discrete): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with an integer
  ``t`` drawn uniformly; the target is ``eps`` (epsilon prediction) or ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
  (v prediction, Salimans & Ho; diffusers' ``get_velocity``). :func:`vp_example`.
* **Rectified flow** (Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis",
  SD3, ICML 2024), in the paper's convention (``t = 1`` is noise): ``x_t = (1 - t) x0 + t eps``, target the
  velocity ``eps - x0``, the network told ``1000 t`` as diffusers' ``FlowMatchEulerDiscreteScheduler``
  numbers its timesteps, so Generate samples the result with that scheduler. :func:`rf_example`.
  The noise level ``t`` is drawn from one of SD3's densities (:func:`sample_t`):

  - ``uniform``;
  - ``logit-normal(m, s)``: ``t = sigmoid(u)``, ``u ~ N(m, s^2)``; the paper's winner is (0, 1);
  - ``mode(s)``: ``t = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, ``u ~ U(0, 1)`` (heavy tails: the density stays
    positive at both ends); the paper's rank-4 variant is s = 1.29;
  - ``cosmap``: ``t = 1 - 1 / (tan(pi u / 2) + 1)``, density ``2 / (pi (1 - 2t + 2t^2))``.

  Drawing ``t`` from a density is SD3's loss weighting (``w_t = t / (1 - t) pi(t)`` in its unified loss), so
  the loss itself stays the plain velocity MSE. The first three come from diffusers'
  ``compute_density_for_timestep_sampling``; CosMap as a *density* is not there (diffusers offers it only as
  a loss weight with uniform draws), so it is drawn here by its inverse CDF. The result is used as ``t``
  directly: diffusers' SD3 scripts instead index a descending sigma table with it, which flips the sign of
  the logit-normal mean relative to the paper.
* **REPA** (Yu et al., "Representation Alignment for Generation", ICLR 2025; sihyun-yu/REPA ``loss.py``):
  the hidden state ``h`` of the denoiser's block ``k`` on ``x_t`` is mapped token by token by a projector MLP
  (``Linear -> SiLU -> Linear -> SiLU -> Linear``, as the official ``build_mlp``) and pulled towards a frozen,
  pretrained encoder's patch tokens ``z`` of the *clean* image: ``L_REPA = -mean_n cos(z_n, MLP(h_n))`` over
  tokens and batch, added as ``loss = L_diffusion + lambda L_REPA`` with ``lambda = 0.5``. The projector is
  trained with the denoiser and dropped afterwards. :class:`Projector`, :func:`repa_loss`, :func:`tap`.
* **Shift** (SD3's resolution-dependent shift, also ``FlowMatchEulerDiscreteScheduler(shift=...)``):
  ``t -> shift t / (1 + (shift - 1) t)``, applied in training and in sampling as the paper does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Density = Literal["uniform", "logit-normal", "mode", "cosmap"]
DENSITIES: tuple[str, ...] = ("uniform", "logit-normal", "mode", "cosmap")
DIFFUSERS_SCHEME = {"uniform": "none", "logit-normal": "logit_normal", "mode": "mode"}
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class TimestepDensity:
    """How rectified flow draws ``t``: the density, its parameters and the shift (defaults: SD3's)."""

    name: Density = "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0

    def __post_init__(self):
        if self.name not in DENSITIES:
            raise ValueError(f"unknown timestep density {self.name!r}; choose one of {', '.join(DENSITIES)}")
        if not (self.logit_std > 0 and self.shift > 0 and math.isfinite(self.logit_mean)):
            raise ValueError("logit_std and shift must be positive and logit_mean finite")
        if self.name == "mode" and not -1.0 <= self.mode_scale <= 2 / (math.pi - 2):
            # outside this range f_mode is not monotone, so it is not the inverse CDF of a density
            raise ValueError(f"mode_scale must be in [-1, {2 / (math.pi - 2):.3f}], got {self.mode_scale}")


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shift ``shift t / (1 + (shift - 1) t)`` (the identity at shift 1)."""
    return shift * t / (1 + (shift - 1) * t)


def sample_t(density: TimestepDensity, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` noise levels ``t`` in (0, 1) (1 = noise), drawn from ``density`` and shifted."""
    if density.name == "cosmap":
        u = torch.rand(n, generator=generator)
        t = 1 - 1 / (torch.tan(math.pi * u / 2) + 1)
    else:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        t = compute_density_for_timestep_sampling(DIFFUSERS_SCHEME[density.name], n, logit_mean=density.logit_mean,
                                                  logit_std=density.logit_std, mode_scale=density.mode_scale,
                                                  generator=generator)
    return shift_t(t.clamp(0.0, 1.0), density.shift)


def pdf(density: TimestepDensity, t: torch.Tensor) -> torch.Tensor:
    """The density of the *unshifted* ``t`` where it has a closed form (uniform, logit-normal, cosmap)."""
    t = t.double()
    if density.name == "uniform":
        return torch.ones_like(t)
    if density.name == "logit-normal":
        z = (torch.log(t / (1 - t)) - density.logit_mean) / density.logit_std
        return torch.exp(-0.5 * z * z) / (density.logit_std * math.sqrt(2 * math.pi) * t * (1 - t))
    if density.name == "cosmap":
        return 2 / (math.pi * (1 - 2 * t + 2 * t * t))
    raise ValueError("the mode density has no closed form (it is defined by its inverse CDF)")


def rf_example(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, target velocity eps - x0, model timestep 1000 t)`` for per-sample ``t`` (B,)."""
    tt = t.to(x0).view(-1, *[1] * (x0.dim() - 1))
    return (1 - tt) * x0 + tt * eps, eps - x0, t * NUM_TRAIN_TIMESTEPS


def vp_example(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, target)`` on the DDPM path at integer timesteps ``t`` (B,): the noise, or v."""
    abar = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    if prediction_type == "epsilon":
        return x_t, eps
    if prediction_type == "v_prediction":
        return x_t, abar.sqrt() * eps - (1 - abar).sqrt() * x0
    raise ValueError(f"the DDPM path trains epsilon or v_prediction, not {prediction_type!r}")


REPA_LAMBDA = 0.5  # the official proj_coeff


class Projector(nn.Sequential):
    """REPA's projector: ``Linear -> SiLU -> Linear -> SiLU -> Linear`` applied to every token (the official
    one has 2048 hidden units on SiT's 768- to 1152-wide tokens; ``hidden`` is scaled down with the network)."""

    def __init__(self, width: int, dim: int, hidden: int = 256):
        super().__init__(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, dim))


def tokens(h: torch.Tensor) -> torch.Tensor:
    """A feature map (B, C, H, W) as (B, H W, C) tokens in row-major order (a ViT's patch order)."""
    return h.flatten(2).transpose(1, 2)


def repa_loss(h: torch.Tensor, z: torch.Tensor, projector: nn.Module) -> torch.Tensor:
    """``-mean cos(z_n, projector(h_n))`` over tokens and batch: ``h`` the denoiser's block-k feature map
    (B, C, H, W), ``z`` the frozen encoder's tokens of the clean images (B, H W, D), on the same grid."""
    projected = projector(tokens(h))
    if projected.shape != z.shape:
        raise ValueError(f"block tokens {tuple(projected.shape)} do not match the encoder's {tuple(z.shape)}; "
                         "align a block whose grid is the encoder's")
    return -F.cosine_similarity(projected, z.detach(), dim=-1).mean()


@contextmanager
def tap(module: nn.Module):
    """Capture ``module``'s output tensor during a forward pass: yields a dict whose ``"h"`` the pass fills
    (a diffusers down block returns ``(hidden_states, residuals)``: the hidden states are kept)."""
    out: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        out["h"] = output[0] if isinstance(output, tuple) else output

    handle = module.register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()
