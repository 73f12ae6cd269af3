"""The variance-exploding SDE that DiffusionNAG diffuses cells with (score_sde's ``sde_lib.VESDE``).

``dX = sqrt(d sigma^2 / dt) dW`` with the geometric schedule sigma(t) = sigma_min (sigma_max /
sigma_min)^t on t in [eps, 1]; the official NAS-Bench-201 configuration: sigma 0.1 .. 5.0,
N = 1000 discretisation steps, eps = 1e-5. Its networks are in :mod:`studio.nets.nag`, its losses
in :mod:`studio.train.nag`, its sampler in :mod:`studio.methods.nag`.

Plain torch, no diffusers: the Architectures tab imports this before the app's page is up.
"""

from __future__ import annotations

import math

from studio import lazy

torch = lazy.load("torch")

SIGMA_MIN, SIGMA_MAX = 0.1, 5.0  # the noise scale at t = 0 and at t = 1
N_STEPS = 1000                    # the official number of reverse-SDE steps
EPS = 1e-5                        # the smallest t (sampling ends there; training draws t from U(EPS, 1))


def sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t, elementwise."""
    return SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def g2(t: torch.Tensor) -> torch.Tensor:
    """Squared diffusion coefficient of the VE-SDE: d sigma^2 / dt = 2 sigma(t)^2 log(sigma_max / sigma_min)."""
    return sigma(t) ** 2 * 2 * math.log(SIGMA_MAX / SIGMA_MIN)
