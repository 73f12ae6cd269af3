"""One trained velocity field, read as DDPM, probability-flow ODE and rectified flow; exact likelihoods;
flow maps. The engine of notebook 08 ("The Principles of Diffusion Models", Lai, Song, Kim, Mitsufuji,
Ermon 2025; notes in ``../shared/reference/methods-flow-theory-inr-var.md`` section 2), built on the
exact 2-D mixtures of :mod:`studio.core.toy2d`.

* :func:`train_eps` fits a small time-conditioned MLP by denoising (epsilon-prediction on the VP path).
* :func:`views` turns that one epsilon field into the score, the VP probability-flow velocity and the
  rectified-flow velocity. VP and RF are one family up to a change of time and scale: dividing
  ``x_vp = alpha x0 + sigma eps`` by ``alpha + sigma`` gives ``(1 - t_rf) x0 + t_rf eps`` with
  ``t_rf = sigma / (alpha + sigma)`` (:func:`vp_to_rf`, :func:`rf_to_vp`), and the noise (so the
  epsilon-prediction) is the same random variable in both coordinates.
* :func:`log_likelihood` integrates ``d log p_t(x_t) / dt = -div v`` along the ODE (exact 2x2 Jacobian).
* :func:`flow_map` integrates ``Psi_{s->t}`` accurately (RK4); :func:`train_flow_map` regresses a
  MeanFlow-style average velocity ``u(x, t, r) = (Psi_{t->r}(x) - x) / (r - t)`` on pairs of points of
  exact trajectories, with ``u(x, t, t) = v(x, t)`` on the diagonal (the tangent condition). This is a
  supervised (Lagrangian) distillation of the exact flow, not MeanFlow's self-consistent training from
  data, which needs the Jacobian-vector product of its identity ``u = v - (t - r) du/dt``.

Fields are callables ``(x (n, d) float64, t float) -> (n, d)``, as in :mod:`toy2d`; networks compute in
float32 and return float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from studio.core.toy2d import DTYPE, GMM, Path, convert, rf_path, vp_path

Field = Callable[[torch.Tensor, float], torch.Tensor]


# --- a small time-conditioned MLP -----------------------------------------------------------------

class TimeMLP(nn.Module):
    """``(x (n, dim), t_1 .. t_k (n,)) -> (n, dim)``: each time enters as ``[t, sin(pi j t), cos(pi j t)]``
    for ``j = 1..freqs``, concatenated to ``x``, then ``depth`` SiLU layers of ``width``."""

    def __init__(self, dim: int = 2, times: int = 1, width: int = 128, depth: int = 3, freqs: int = 6):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, freqs + 1, dtype=torch.float32))
        layers, n_in = [], dim + times * (1 + 2 * freqs)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        self.net = nn.Sequential(*layers, nn.Linear(n_in, dim))

    def forward(self, x: torch.Tensor, *times: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for t in times:
            a = t[:, None] * self.freqs
            feats += [t[:, None], a.sin(), a.cos()]
        return self.net(torch.cat(feats, 1))


def _fit(net: nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], steps: int, lr: float,
         seed: int) -> list[float]:
    """Adam with a cosine learning-rate decay; returns the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = loss_fn(gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


# --- the one trained field -------------------------------------------------------------------------

@dataclass
class EpsField:
    """A trained epsilon-predictor on ``path``; call it as ``eps(x, t)`` (float64 in and out). Gradients
    flow only when ``x`` requires them (for :func:`divergence`)."""

    net: TimeMLP
    path: Path
    losses: list[float] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        with torch.set_grad_enabled(x.requires_grad):
            tt = torch.full((x.shape[0],), float(t))
            return self.net(x.float(), tt).to(DTYPE)


def train_eps(gmm: GMM, path: Path | None = None, steps: int = 2000, batch: int = 512, width: int = 128,
              lr: float = 3e-3, seed: int = 0) -> EpsField:
    """Denoising score matching in its epsilon form: ``E ||eps_theta(alpha_t x0 + sigma_t eps, t) - eps||^2``
    with ``t`` uniform on 1,000 times spanning ``[t_min, t_max]`` and fresh samples of ``gmm`` every step (the population loss, no
    memorisation). A few seconds on one core."""
    path = path or vp_path()
    torch.manual_seed(seed)
    net = TimeMLP(gmm.dim, 1, width)

    # t on a fine table of 1,000 times (as DDPM's discrete steps), so alpha and sigma are looked up
    table = torch.linspace(path.t_min, path.t_max, 1000)
    alphas = torch.tensor([path.alpha(t) for t in table.tolist()])
    sigmas = torch.tensor([path.sigma(t) for t in table.tolist()])

    def loss(gen):
        x0 = gmm.sample(batch, gen).float()
        eps = torch.randn(batch, gmm.dim, generator=gen)
        k = torch.randint(0, len(table), (batch,), generator=gen)
        x_t = alphas[k, None] * x0 + sigmas[k, None] * eps
        return ((net(x_t, table[k]) - eps) ** 2).sum(1).mean()

    return EpsField(net, path, _fit(net, loss, steps, lr, seed))


# --- VP <-> RF: the same family up to time and scale ---------------------------------------------------

def rf_time(t: float, path: Path) -> float:
    """``t_rf = sigma / (alpha + sigma)`` of time ``t`` on ``path``."""
    a, s = path.alpha(t), path.sigma(t)
    return s / (a + s)


def time_from_rf(t_rf: float, path: Path, tol: float = 1e-13) -> float:
    """The time on ``path`` whose ``sigma / (alpha + sigma)`` is ``t_rf`` (bisection; the ratio grows with
    ``t`` on any diffusion path)."""
    lo, hi = 0.0, 1.0
    if not rf_time(lo + 1e-12, path) <= t_rf <= rf_time(hi, path):
        raise ValueError(f"t_rf = {t_rf} is outside the range {path.name} reaches on [0, 1]")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rf_time(mid, path) < t_rf else (lo, mid)
    return 0.5 * (lo + hi)


def vp_to_rf(x: torch.Tensor, t: float, path: Path) -> tuple[torch.Tensor, float]:
    """``(x / (alpha + sigma), sigma / (alpha + sigma))``: a point of ``path`` in rectified-flow coordinates."""
    a, s = path.alpha(t), path.sigma(t)
    return x / (a + s), s / (a + s)


def rf_to_vp(x: torch.Tensor, t_rf: float, path: Path) -> tuple[torch.Tensor, float]:
    """The inverse of :func:`vp_to_rf`."""
    t = time_from_rf(t_rf, path)
    return x * (path.alpha(t) + path.sigma(t)), t


def eps_in_rf(eps: Field, path: Path) -> Field:
    """An epsilon field of ``path`` read in rectified-flow coordinates: ``eps_rf(x, t_rf) = eps(x_vp, t_vp)``
    (the noise is the same random variable after the change of variables)."""
    def f(x: torch.Tensor, t_rf: float) -> torch.Tensor:
        xv, tv = rf_to_vp(x, t_rf, path)
        return eps(xv, tv)
    return f


@dataclass(frozen=True)
class Views:
    """One epsilon field of the VP path, four ways: ``score`` and ``velocity`` on VP, ``eps_rf`` and
    ``velocity_rf`` (``v = eps - x0``) in rectified-flow coordinates."""

    score: Field
    velocity: Field
    eps_rf: Field
    velocity_rf: Field


def views(eps: Field, vp: Path | None = None) -> Views:
    """The DDPM reverse SDE uses ``score``, the PF-ODE ``velocity``, flow matching ``velocity_rf``."""
    vp = vp or vp_path()
    rf = rf_path()
    e_rf = eps_in_rf(eps, vp)
    return Views(score=lambda x, t: convert(eps(x, t), "eps", "score", x, t, vp),
                 velocity=lambda x, t: convert(eps(x, t), "eps", "velocity", x, t, vp),
                 eps_rf=e_rf,
                 velocity_rf=lambda x, t: convert(e_rf(x, t), "eps", "velocity", x, t, rf))


def rf_grid(path: Path, steps: int) -> torch.Tensor:
    """``steps + 1`` uniform rectified-flow times spanning what ``path``'s ``[t_min, t_max]`` maps to."""
    return torch.linspace(rf_time(path.t_max, path), rf_time(path.t_min, path), steps + 1, dtype=DTYPE)


# --- integrators, path length, likelihood ----------------------------------------------------------

def rk4(v: Field, x: torch.Tensor, times: torch.Tensor) -> list[torch.Tensor]:
    """Classical Runge-Kutta along ``times``; every state, the start included."""
    out = [x]
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        h = s - t
        k1 = v(x, t)
        k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = v(x + h * k3, s)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(x)
    return out


def flow_map(v: Field, x: torch.Tensor, s: float, t: float, steps: int = 100) -> torch.Tensor:
    """``Psi_{s->t}(x) = x + int_s^t v(x_u, u) du`` by ``steps`` RK4 steps (``t`` may be below ``s``)."""
    if s == t:
        return x
    return rk4(v, x, torch.linspace(s, t, steps + 1, dtype=DTYPE))[-1]


def path_length(states: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``sum_i ||x_{i+1} - x_i||`` per particle (n,), from a trajectory's states."""
    xs = torch.stack(list(states)) if isinstance(states, list) else states
    return (xs[1:] - xs[:-1]).norm(dim=-1).sum(0)


def divergence(v: Field, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v(x, t), div_x v(x, t))``, the divergence as the exact trace of the Jacobian (one backward pass
    per dimension; cheap in 2-D). ``v`` must be differentiable in torch."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = v(x, t)
        div = torch.zeros(x.shape[0], dtype=out.dtype)
        for i in range(x.shape[1]):
            div = div + torch.autograd.grad(out[:, i].sum(), x, retain_graph=i < x.shape[1] - 1)[0][:, i]
    return out.detach(), div.detach()


def gaussian_log_prior(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``log N(x; 0, (alpha^2 + sigma^2) I)`` at ``t_max``: the law :func:`toy2d.prior` samples."""
    var = path.alpha(path.t_max) ** 2 + path.sigma(path.t_max) ** 2
    return lambda x: -0.5 * (x ** 2).sum(1) / var - 0.5 * x.shape[1] * math.log(2 * math.pi * var)


def log_likelihood(v: Field, x: torch.Tensor, path: Path, steps: int = 100,
                   log_prior: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``log p_{t_min}(x)`` (n,) by the instantaneous change of variables: carry ``(x_t, int div v dt)`` from
    ``t_min`` to ``t_max`` with RK4, then ``log p_{t_min}(x) = log p_{t_max}(x_{t_max}) + int div v dt``.
    ``log_prior`` defaults to :func:`gaussian_log_prior`."""
    log_prior = log_prior or gaussian_log_prior(path)
    times = torch.linspace(path.t_min, path.t_max, steps + 1, dtype=DTYPE)
    acc = torch.zeros(x.shape[0], dtype=DTYPE)
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        h = s - t
        k1, d1 = divergence(v, x, t)
        k2, d2 = divergence(v, x + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = divergence(v, x + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = divergence(v, x + h * k3, s)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        acc = acc + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return log_prior(x) + acc


# --- flow maps -----------------------------------------------------------------------------------

@dataclass
class FlowMap:
    """A learned ``Psi_{t->r}(x) = x + (r - t) u(x, t, r)`` (MeanFlow's average velocity ``u``)."""

    net: TimeMLP
    losses: list[float] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, t: float, r: float) -> torch.Tensor:
        n = x.shape[0]
        with torch.no_grad():
            u = self.net(x.float(), torch.full((n,), float(t)), torch.full((n,), float(r))).to(DTYPE)
        return x + (r - t) * u

    def sample(self, z: torch.Tensor, times: list[float] | torch.Tensor) -> torch.Tensor:
        """Jump along ``times`` (e.g. ``[1, 0]`` for one step, ``[1, 0.5, 0]`` for two)."""
        times = [float(t) for t in times]
        for t, r in zip(times[:-1], times[1:]):
            z = self(z, t, r)
        return z


def trajectories(v: Field, x: torch.Tensor, times: torch.Tensor, substeps: int = 4) -> torch.Tensor:
    """Exact-ODE states (len(times), n, d) at ``times``, each interval integrated by ``substeps`` RK4 steps."""
    out = [x]
    for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
        x = flow_map(v, x, t, s, substeps)
        out.append(x)
    return torch.stack(out)


def train_flow_map(v: Field, states: torch.Tensor, times: torch.Tensor, steps: int = 2000, batch: int = 512,
                   width: int = 128, lr: float = 3e-3, diagonal: float = 0.1, seed: int = 0) -> FlowMap:
    """Regress ``u(x_i, t_i, t_j) = (x_j - x_i) / (t_j - t_i)`` on random pairs ``t_i > t_j`` of the exact
    trajectories ``states`` (len(times), n, d) (times decreasing), and ``u(x_i, t_i, t_i) = v(x_i, t_i)`` on
    a ``diagonal`` share of each batch (the tangent condition ``d/dr Psi_{t->r}|_{r=t} = v``)."""
    torch.manual_seed(seed)
    k, n, d = states.shape
    vel = torch.stack([v(states[i], t) for i, t in enumerate(times.tolist())]).float()
    xs, ts = states.float(), times.float()
    net = TimeMLP(d, 2, width)

    def loss(gen):
        p = torch.randint(0, n, (batch,), generator=gen)
        i = torch.randint(0, k - 1, (batch,), generator=gen)
        j = i + 1 + (torch.rand(batch, generator=gen) * (k - 1 - i)).long().clamp(max=k - 2 - i)
        diag = torch.rand(batch, generator=gen) < diagonal
        j = torch.where(diag, i, j)
        x_i, x_j, t_i, t_j = xs[i, p], xs[j, p], ts[i], ts[j]
        target = torch.where(diag[:, None], vel[i, p], (x_j - x_i) / (t_j - t_i).clamp(max=-1e-6)[:, None])
        return ((net(x_i, t_i, t_j) - target) ** 2).sum(1).mean()

    return FlowMap(net, _fit(net, loss, steps, lr, seed))
