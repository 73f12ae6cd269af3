"""Score estimation as regression with noisy labels: a wide two-layer ReLU network trained by full-batch
gradient descent, next to the kernel-regression predictor of its neural tangent kernel (notebook 10).

Han, Razaviyayn, Xu, "Neural Network-Based Score Estimation in Diffusion Models: Optimization and
Generalization" (ICLR 2024). **The paper's body was not read.** What follows is the reconstruction of
``../shared/reference/methods-flow-theory-inr-var.md`` section 3, consistent with its abstract and the
ICLR reviews; the exact forms (the network, the kernel, the stopping rule's constants) are unverified.

* Score identity: ``grad log p_t(x) = -x / sigma_t^2 + (alpha_t / sigma_t^2) E[x0 | x_t = x]``, so the
  parametric form ``s_W(x, t) = (alpha_t f_W(x, t) - x) / sigma_t^2`` leaves the network ``f_W`` to learn
  the posterior mean. Denoising score matching weighted by ``sigma_t^4 / alpha_t^2`` is then
  ``min_W (1/2n) sum_i ||f_W(z_i) - x0_i||^2`` with ``z_i = [x_{t_i}; t_i; 1]``: regression whose labels
  ``x0_i`` are noisy versions of the target ``E[x0 | x_t]`` (the label noise ``x0 - E[x0 | x_t]`` has mean 0).
* Network: ``f_W(z) = (1/sqrt m) sum_r a_r ReLU(w_r . z)`` in ``R^d``, ``a_r in {+-1}^d`` fixed at random,
  only ``W`` trained, by full-batch GD.
* Its tangent kernel (W-gradient only) at initialisation is
  ``K_jk(z, z') = (1/m) sum_r a_rj a_rk (z . z') 1{w_r.z > 0} 1{w_r.z' > 0}``, which tends to
  ``k(z, z') I_d`` with ``k(z, z') = (z . z') (pi - angle(z, z')) / (2 pi)`` for ``w_r ~ N(0, I)``.
* GD with step ``eta`` on kernel regression gives, after ``k`` steps,
  ``f_k = f_0 + K(., Z) [I - (I - eta K_n / n)^k] K_n^{-1} (Y - f_0(Z))`` (:class:`KernelGD`).
* Early stopping (the classical rule of Raskutti, Wainwright, Yu 2014, which the paper is said to adapt):
  stop at the first ``k`` with ``R(1 / sqrt(eta k)) > 1 / (2 e sigma eta k)``, ``R(eps)^2 = (1/n) sum_j
  min(lambda_j, eps^2)``, ``lambda_j`` the eigenvalues of ``K_n / n`` (:func:`stopping_step`).

Time is the Ornstein-Uhlenbeck clock of the notes (``alpha_t = e^{-t}``, ``sigma_t^2 = 1 - e^{-2t}``,
``t`` uniform on ``[t0, T]``), not ``toy2d.vp_path()``; the exact posterior mean is
:meth:`studio.core.toy2d.GMM.denoise`. Everything is float64 torch on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from studio.core.toy2d import GMM

DTYPE = torch.float64


# --- data: fixed (x0, t, eps) triples with the exact target ------------------------------------------

def ou(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_t, sigma_t)`` of the Ornstein-Uhlenbeck (VP) path in its own clock: ``e^{-t}``, ``sqrt(1 - e^{-2t})``."""
    return torch.exp(-t), torch.sqrt(-torch.expm1(-2 * t))


def features(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's input ``z = [x; t; 1]``: (n, d + 2) from x (n, d) and t (n,)."""
    return torch.cat([x, t[:, None], torch.ones_like(t)[:, None]], dim=1)


@dataclass(frozen=True)
class Triples:
    """``n`` draws of ``(x0, t, eps)``, the noised point, the input ``z``, and the exact target
    ``E[x0 | x_t]`` (shapes (n, d), (n,), (n, d), (n, d), (n, d + 2), (n, d))."""

    x0: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    xt: torch.Tensor
    z: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.x0.shape[0]

    @property
    def label_noise(self) -> float:
        """Per-coordinate standard deviation of the label noise ``x0 - E[x0 | x_t]`` on these draws."""
        return float((self.x0 - self.target).pow(2).mean().sqrt())


def posterior_mean(gmm: GMM, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``E[x0 | x_t]`` for points (n, d) each at its own OU time t (n,), from the exact :meth:`GMM.denoise`."""
    alpha, sigma = ou(t)
    out = torch.empty_like(xt)
    for i in range(xt.shape[0]):  # GMM.denoise takes one (alpha, sigma); a few thousand calls take ~0.1 s
        out[i] = gmm.denoise(xt[i:i + 1], float(alpha[i]), float(sigma[i]))[0]
    return out


def score_from_x0(f: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The parametric form ``s = (alpha_t f - x) / sigma_t^2``: (n, d) from a clean estimate f (n, d)."""
    alpha, sigma = ou(t)
    return (alpha[:, None] * f - xt) / sigma[:, None] ** 2


def draw_times(n: int, generator: torch.Generator, t0: float = 1e-2, T: float = 3.0) -> torch.Tensor:
    """``t ~ U[t0, T]`` (n,); ``t0 > 0`` keeps away from ``sigma = 0``, where the score blows up."""
    return t0 + (T - t0) * torch.rand(n, generator=generator, dtype=DTYPE)


def noised(x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh ``eps`` and ``x_t = alpha_t x0 + sigma_t eps``: (eps, x_t), both (n, d)."""
    eps = torch.randn(x0.shape, generator=generator, dtype=DTYPE)
    alpha, sigma = ou(t)
    return eps, alpha[:, None] * x0 + sigma[:, None] * eps


def make_triples(gmm: GMM, n: int, seed: int, t0: float = 1e-2, T: float = 3.0) -> Triples:
    """``n`` triples: ``x0 ~ gmm``, ``t ~ U[t0, T]``, ``eps ~ N(0, I)``, with the exact targets."""
    g = torch.Generator().manual_seed(seed)
    x0 = gmm.sample(n, generator=g)
    t = draw_times(n, g, t0, T)
    eps, xt = noised(x0, t, g)
    return Triples(x0, t, eps, xt, features(xt, t), posterior_mean(gmm, xt, t))


def true_error(f: torch.Tensor, data: Triples) -> float:
    """``E ||f - E[x0 | x_t]||^2`` estimated on Monte-Carlo points ``data`` (fresh draws, not the training set);
    ``f`` (n, d) are the predictions at ``data.z``."""
    return float((f - data.target).pow(2).sum(1).mean())


# --- the two-layer network -------------------------------------------------------------------------

@dataclass
class TwoLayerNet:
    """``f_W(z) = (1/sqrt m) sum_r a_r ReLU(w_r . z)``: W (m, p) trained, a (m, d) fixed signs."""

    W: torch.Tensor
    a: torch.Tensor

    @property
    def width(self) -> int:
        return self.W.shape[0]

    @property
    def a_rows(self) -> torch.Tensor:
        """``a`` laid out as (d, m) rows."""
        return self.__dict__.setdefault("_a_rows", self.a.T.contiguous())

    def workspace(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three (n, m) buffers kept between GD steps: allocating megabytes afresh every step costs more
        than the arithmetic."""
        ws = self.__dict__.setdefault("_ws", {})
        if n not in ws:
            ws[n] = tuple(torch.empty(n, self.width, dtype=self.W.dtype) for _ in range(3))
        return ws[n]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """(n, p) inputs -> (n, d) outputs."""
        return torch.relu(z @ self.W.T) @ self.a / math.sqrt(self.width)


def init_net(m: int, d: int, p: int | None = None, seed: int = 0, symmetric: bool = True) -> TwoLayerNet:
    """``w_r ~ N(0, I_p)`` (``p = d + 2`` by default), ``a_r`` uniform in ``{+-1}^d``.

    ``symmetric`` pairs the neurons (``w_{r + m/2} = w_r``, ``a_{r + m/2} = -a_r``) so that ``f_0 = 0`` while
    the tangent kernel keeps its law (the usual "doubling trick"; our choice, not necessarily the paper's)."""
    p = d + 2 if p is None else p
    g = torch.Generator().manual_seed(seed)
    half = m // 2 if symmetric else m
    if symmetric and m % 2:
        raise ValueError(f"a symmetric network needs an even width, got m = {m}")
    W = torch.randn(half, p, generator=g, dtype=DTYPE)
    a = torch.randint(0, 2, (half, d), generator=g).to(DTYPE) * 2 - 1
    if symmetric:
        W, a = torch.cat([W, W]), torch.cat([a, -a])
    return TwoLayerNet(W, a)


def gd_step(net: TwoLayerNet, z: torch.Tensor, y: torch.Tensor, eta: float) -> float:
    """One full-batch GD step on ``W`` for the loss ``(1/2n) sum_i ||f_W(z_i) - y_i||^2``; returns the loss
    before the step. Updates ``net.W`` in place."""
    n, m = z.shape[0], net.width
    pre, back, on = net.workspace(n)  # (the buffers and the memory layouts below are for speed only)
    torch.matmul(z, net.W.T, out=pre).clamp_(min=0)  # ReLU(w_r . z_i), (n, m)
    torch.sign(pre, out=on)  # 1{w_r . z_i > 0}
    r = torch.mm(pre, net.a_rows.T) / math.sqrt(m) - y  # (n, d) residuals
    # dL/dw_r = (1/n) sum_i (a_r . r_i) 1{w_r . z_i > 0} z_i / sqrt(m)
    torch.matmul(r, net.a_rows, out=back).mul_(on)  # (n, m)
    net.W.sub_((z.T @ back).T, alpha=eta / (n * math.sqrt(m)))
    return float(0.5 * r.pow(2).sum(1).mean())


# --- the tangent kernel ---------------------------------------------------------------------------

def empirical_ntk(net: TwoLayerNet, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``K_jk(z, z') = (1/m) sum_r a_rj a_rk (z . z') 1{w_r.z > 0} 1{w_r.z' > 0}``: (n1, n2, d, d)."""
    s1, s2 = (z1 @ net.W.T > 0).to(DTYPE), (z2 @ net.W.T > 0).to(DTYPE)  # (n, m)
    aa = net.a[:, :, None] * net.a[:, None, :]  # (m, d, d)
    both = torch.einsum("ir,jr,rkl->ijkl", s1, s2, aa) / net.width
    return both * (z1 @ z2.T)[:, :, None, None]


def ntk(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The infinite-width kernel ``k(z, z') = (z . z') (pi - angle(z, z')) / (2 pi)``: (n1, n2)."""
    dot = z1 @ z2.T
    norms = z1.norm(dim=1)[:, None] * z2.norm(dim=1)[None, :]
    angle = torch.arccos((dot / norms).clamp(-1.0, 1.0))
    return dot * (math.pi - angle) / (2 * math.pi)


class KernelGD:
    """Gradient descent with step ``eta`` on kernel regression ``(1/2n) sum ||f(z_i) - y_i||^2`` from ``f_0``,
    in closed form for every step count ``k`` through the eigendecomposition ``K_n = U diag(lam) U^T``:

        ``f_k(z) = f_0(z) + K(z, Z) U diag((1 - (1 - eta lam / n)^k) / lam) U^T (Y - f_0(Z))``.

    z (n, p) training inputs, y (n, d) labels, f0 (n, d) the starting predictions there (zeros by default)."""

    def __init__(self, z: torch.Tensor, y: torch.Tensor, eta: float, f0: torch.Tensor | None = None):
        self.z, self.eta, self.n = z, eta, z.shape[0]
        lam, self.U = torch.linalg.eigh(ntk(z, z))
        self.lam = lam.clamp_min(0.0)
        self.proj = self.U.T @ (y - (torch.zeros_like(y) if f0 is None else f0))  # (n, d)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``K_n / n`` (ascending), the ``lambda_j`` of the stopping rule."""
        return self.lam / self.n

    def max_stable_eta(self) -> float:
        """GD on the kernel model diverges for ``eta >= 2 / lambda_max(K_n / n)``."""
        return float(2 / self.eigenvalues[-1])

    def gain(self, k: float) -> torch.Tensor:
        """``(1 - (1 - eta lam / n)^k) / lam`` (n,), with its limit ``eta k / n`` where ``lam`` is 0."""
        step = self.eta * self.lam / self.n
        safe = step.clamp(max=0.5)  # expm1/log1p keep 1 - (1 - step)^k accurate for tiny steps
        done = torch.where(step < 0.5, -torch.expm1(k * torch.log1p(-safe)), 1 - torch.pow(1 - step, k))
        return torch.where(self.lam > 0, done / self.lam.clamp_min(1e-300), torch.full_like(self.lam, self.eta * k / self.n))

    def basis(self, zq: torch.Tensor) -> torch.Tensor:
        """``K(zq, Z) U`` (nq, n): compute once per query set, then :meth:`predict` is cheap for every k."""
        return ntk(zq, self.z) @ self.U

    def predict(self, basis: torch.Tensor, k: float, f0q: torch.Tensor | None = None) -> torch.Tensor:
        """``f_k`` at the query points whose :meth:`basis` is given: (nq, d)."""
        out = basis @ (self.gain(k)[:, None] * self.proj)
        return out if f0q is None else f0q + out


def stopping_step(eigenvalues: torch.Tensor, eta: float, sigma: float, max_steps: int = 10 ** 9) -> int:
    """The first ``k`` with ``R(1 / sqrt(eta k)) > 1 / (2 e sigma eta k)``, ``R(eps)^2 = mean_j min(lambda_j, eps^2)``
    (Raskutti, Wainwright, Yu 2014; the paper adapts it, its constants are unverified here). ``eigenvalues``
    are those of ``K_n / n`` and ``sigma`` the label-noise standard deviation. ``k R(1/sqrt(eta k))`` grows with
    ``k``, so the first crossing is found by bisection; returns ``max_steps`` if there is none before it."""
    lam = eigenvalues.clamp_min(0.0)

    def crossed(k: int) -> bool:
        r = torch.sqrt(torch.minimum(lam, torch.tensor(1.0 / (eta * k), dtype=lam.dtype)).mean())
        return bool(r > 1.0 / (2 * math.e * sigma * eta * k))

    if not crossed(max_steps):
        return max_steps
    lo, hi = 0, max_steps  # crossed(hi) holds; crossed(lo) does not (k = 0 is never crossed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if crossed(mid) else (mid, hi)
    return hi
