"""Low-dimensional worlds where every quantity of diffusion is exact: the Theory tab's playground
and notebooks 08-11.

Every toy distribution is a mixture of isotropic Gaussians (:class:`GMM`). Two moons, a ring and a
spiral are mixtures of many narrow components placed along the curve, so they are smooth versions
of those shapes whose score is known in closed form at every noise level. For a path
``x_t = alpha_t x0 + sigma_t eps`` the noised law is again a mixture,
``p_t = sum_k pi_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I)``, so the posterior mean
(the x0-prediction), the noise prediction, the score and the probability-flow velocity are exact
(the formulas of "The Principles of Diffusion Models", Lai, Song, Kim, Mitsufuji, Ermon 2025, ch. 4;
see ``../shared/reference/methods-flow-theory-inr-var.md`` section 2):

==========================  =========================================================
``score``                   ``s = -eps / sigma``
``x0`` (Tweedie)            ``x0 = (x - sigma eps) / alpha = (x + sigma^2 s) / alpha``
``velocity`` (PF-ODE)       ``v = alpha' x0 + sigma' eps = f x - g^2 s / 2``
back from ``velocity``      ``x0 = (sigma' x - sigma v) / D``, ``eps = (alpha v - alpha' x) / D``,
                            ``D = alpha sigma' - sigma alpha'``
==========================  =========================================================

with ``f = alpha' / alpha`` and ``g^2 = (sigma^2)' - 2 f sigma^2``. :func:`convert` applies the
table; :func:`ode` and :func:`sde` integrate the probability-flow ODE and the reverse SDE.
Everything is float64 torch on the CPU: a 2,000-particle, 200-step run takes a fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch

Parametrisation = Literal["eps", "x0", "score", "velocity"]
PARAMETRISATIONS: tuple[str, ...] = ("eps", "x0", "score", "velocity")
TOYS: tuple[str, ...] = ("gaussians", "two moons", "ring", "spiral")
DTYPE = torch.float64


# --- distributions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GMM:
    """``sum_k weights_k N(means_k, stds_k^2 I)``: means (K, d), stds (K,), weights (K,) summing to 1."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=DTYPE)
        return self.means[k] + self.stds[k, None] * z

    def _noised(self, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (K, d) and variances (K,) of the components of ``p_t``."""
        return alpha * self.means, alpha ** 2 * self.stds ** 2 + sigma ** 2

    def log_prob(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """``log p_t(x)`` for (n, d) points."""
        return torch.logsumexp(self._log_joint(x, alpha, sigma), dim=1)

    def _log_joint(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        m, var = self._noised(alpha, sigma)
        sq = torch.cdist(x, m) ** 2  # (n, K)
        return (torch.log(self.weights) - 0.5 * self.dim * torch.log(2 * math.pi * var)) - 0.5 * sq / var

    def responsibilities(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``p(k | x_t = x)``, (n, K)."""
        return torch.softmax(self._log_joint(x, alpha, sigma), dim=1)

    def denoise(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``E[x0 | x_t = x]``: per component ``mu + alpha s^2 (x - alpha mu) / (alpha^2 s^2 + sigma^2)``."""
        r = self.responsibilities(x, alpha, sigma)
        m, var = self._noised(alpha, sigma)
        gain = alpha * self.stds ** 2 / var  # (K,)
        # sum_k r_k [mu_k + gain_k (x - alpha mu_k)] = r @ (mu (1 - alpha gain)) + (r @ gain) x
        return r @ (self.means * (1 - alpha * gain)[:, None]) + (r @ gain)[:, None] * x

    def score(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``grad log p_t(x)``: per component ``(alpha mu - x) / (alpha^2 s^2 + sigma^2)``."""
        r = self.responsibilities(x, alpha, sigma)
        m, var = self._noised(alpha, sigma)
        return r @ (m / var[:, None]) - (r @ (1 / var))[:, None] * x


def _along(points: torch.Tensor, std: float) -> GMM:
    n = points.shape[0]
    return GMM(points.to(DTYPE), torch.full((n,), std, dtype=DTYPE), torch.full((n,), 1.0 / n, dtype=DTYPE))


def toy(name: str, components: int = 64) -> GMM:
    """One of :data:`TOYS`, scaled to roughly unit spread.

    * ``gaussians``: eight Gaussians (std 0.15) on a circle of radius 1.5, unequal weights;
    * ``two moons``: two interleaved half circles, ``components`` narrow Gaussians (std 0.08) along them;
    * ``ring``: a circle of radius 1.5 (std 0.08);
    * ``spiral``: an Archimedean spiral of 1.5 turns (std 0.07).
    """
    if name == "gaussians":
        angle = torch.arange(8, dtype=DTYPE) * (2 * math.pi / 8)
        w = torch.tensor([3, 1, 2, 1, 3, 1, 2, 1], dtype=DTYPE)
        return GMM(1.5 * torch.stack([angle.cos(), angle.sin()], 1), torch.full((8,), 0.15, dtype=DTYPE), w / w.sum())
    if name == "two moons":
        half = components // 2
        a = torch.linspace(0, math.pi, half, dtype=DTYPE)
        upper = torch.stack([a.cos(), a.sin()], 1)
        lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)
        pts = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=DTYPE)
        return _along(pts * 1.2, 0.08)
    if name == "ring":
        a = torch.arange(components, dtype=DTYPE) * (2 * math.pi / components)
        return _along(1.5 * torch.stack([a.cos(), a.sin()], 1), 0.08)
    if name == "spiral":
        s = torch.linspace(0.25, 1.0, components, dtype=DTYPE)
        a = 3 * math.pi * s
        return _along(2.0 * s[:, None] * torch.stack([a.cos(), a.sin()], 1), 0.07)
    raise ValueError(f"unknown toy {name!r}; choose one of {', '.join(TOYS)}")


# --- paths (forward processes) -------------------------------------------------------------------

@dataclass(frozen=True)
class Path:
    """``x_t = alpha(t) x0 + sigma(t) eps`` on ``t`` in [0, 1] (0: data, 1: noise) with derivatives.

    ``t_min`` / ``t_max`` keep the conversions away from their poles (sigma = 0 at the data end,
    alpha = 0 at the noise end of rectified flow)."""

    name: str
    alpha: Callable[[float], float]
    sigma: Callable[[float], float]
    dalpha: Callable[[float], float]
    dsigma: Callable[[float], float]
    t_min: float = 1e-3
    t_max: float = 1.0

    def f(self, t: float) -> float:
        """Drift coefficient of the forward SDE ``dx = f x dt + g dw``."""
        return self.dalpha(t) / self.alpha(t)

    def g2(self, t: float) -> float:
        """Squared diffusion coefficient ``(sigma^2)' - 2 f sigma^2``."""
        return 2 * self.sigma(t) * self.dsigma(t) - 2 * self.f(t) * self.sigma(t) ** 2

    def grid(self, steps: int) -> torch.Tensor:
        """``steps + 1`` times from ``t_max`` down to ``t_min`` (uniform)."""
        return torch.linspace(self.t_max, self.t_min, steps + 1, dtype=DTYPE)


BETA_MIN, BETA_MAX = 0.1, 20.0  # the continuous DDPM (VP SDE) schedule of Song et al. 2021


def _vp_log_alpha(t: float) -> float:
    return -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN


def vp_path() -> Path:
    """The variance-preserving (DDPM) path: ``beta(t) = 0.1 + 19.9 t``, ``alpha = exp(-1/2 int beta)``."""
    def alpha(t):
        return math.exp(_vp_log_alpha(t))

    def sigma(t):
        return math.sqrt(max(1.0 - alpha(t) ** 2, 0.0))

    def beta(t):
        return BETA_MIN + t * (BETA_MAX - BETA_MIN)

    return Path("vp", alpha, sigma, lambda t: -0.5 * beta(t) * alpha(t),
                lambda t: 0.5 * beta(t) * alpha(t) ** 2 / sigma(t))


def rf_path() -> Path:
    """Rectified flow / flow matching: ``alpha = 1 - t``, ``sigma = t``."""
    return Path("rf", lambda t: 1.0 - t, lambda t: t, lambda t: -1.0, lambda t: 1.0, t_min=1e-3, t_max=1.0 - 1e-3)


PATHS = {"vp": vp_path, "rf": rf_path}


# --- the one field, four ways ---------------------------------------------------------------------

def exact(gmm: GMM, kind: str, x: torch.Tensor, t: float, path: Path) -> torch.Tensor:
    """The exact prediction of one parametrisation at ``(x, t)``."""
    a, s = path.alpha(t), path.sigma(t)
    x0 = gmm.denoise(x, a, s)
    return from_x0(x0, kind, x, t, path)


def from_x0(x0: torch.Tensor, kind: str, x: torch.Tensor, t: float, path: Path) -> torch.Tensor:
    """The ``kind`` prediction implied by the clean estimate ``x0`` at ``(x, t)``."""
    a, s = path.alpha(t), path.sigma(t)
    eps = (x - a * x0) / s
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / s
    if kind == "velocity":
        return path.dalpha(t) * x0 + path.dsigma(t) * eps
    raise ValueError(f"unknown parametrisation {kind!r}; choose one of {', '.join(PARAMETRISATIONS)}")


def to_x0_eps(pred: torch.Tensor, kind: str, x: torch.Tensor, t: float, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from any parametrisation's prediction (the conversion table of the module docstring)."""
    a, s, da, ds = path.alpha(t), path.sigma(t), path.dalpha(t), path.dsigma(t)
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if kind == "velocity":
        d = a * ds - s * da
        return (ds * x - s * pred) / d, (a * pred - da * x) / d
    raise ValueError(f"unknown parametrisation {kind!r}; choose one of {', '.join(PARAMETRISATIONS)}")


def convert(pred: torch.Tensor, kind: str, to: str, x: torch.Tensor, t: float, path: Path) -> torch.Tensor:
    """The same field in another parametrisation."""
    x0, _ = to_x0_eps(pred, kind, x, t, path)
    return from_x0(x0, to, x, t, path)


def velocity(predict: Callable[[torch.Tensor, float], torch.Tensor], kind: str, path: Path):
    """The probability-flow velocity ``dx/dt`` from a predictor of ``kind``."""
    def v(x: torch.Tensor, t: float) -> torch.Tensor:
        return convert(predict(x, t), kind, "velocity", x, t, path)
    return v


# --- samplers -----------------------------------------------------------------------------------------

def ode(v: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, times: torch.Tensor,
        heun: bool = False) -> Iterator[torch.Tensor]:
    """Integrate ``dx/dt = v(x, t)`` along ``times`` (Euler, or Heun's second order); yields every state,
    the start included."""
    yield x
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        d = v(x, t)
        if heun:
            x_e = x + (s - t) * d
            x = x + (s - t) * 0.5 * (d + v(x_e, s))
        else:
            x = x + (s - t) * d
        yield x


def sde(score: Callable[[torch.Tensor, float], torch.Tensor], path: Path, x: torch.Tensor, times: torch.Tensor,
        generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """The reverse SDE ``dx = [f x - g^2 s] dt + g dw`` backwards along ``times`` (Euler-Maruyama; the last
    step adds no noise, as DDPM's does not). Yields every state, the start included."""
    yield x
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist()))
    for i, (t, s) in enumerate(pairs):
        h = t - s
        x = x - h * (path.f(t) * x - path.g2(t) * score(x, t))
        if i < len(pairs) - 1:
            x = x + math.sqrt(path.g2(t) * h) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        yield x


def prior(n: int, dim: int, path: Path, generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting points at ``t_max``: ``N(0, (alpha^2 + sigma^2) I)``, the noised law of unit-variance data.
    ``alpha(t_max)`` is 0.007 (VP) or 0.001 (RF), so what the data add there is negligible."""
    t = path.t_max
    return math.sqrt(path.sigma(t) ** 2 + path.alpha(t) ** 2) * torch.randn(n, dim, generator=generator, dtype=DTYPE)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``2 E|a - b| - E|a - a'| - E|b - b'|`` (V-statistics), zero iff the laws are equal."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())
