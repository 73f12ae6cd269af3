"""Guided generation as regularised optimisation, on 2-D mixtures where the optimum is known
(Chen, Mei, Fan, Wang, "An Overview of Diffusion Models: Applications, Guided Generation, Statistical
Rates and Optimization", 2024, section on guidance; notebook ``11_guidance_as_optimisation``).

KL-regularised reward maximisation ``max_p E_p[f] - tau KL(p || p_data)`` has the exact solution
``p* = p_data exp(f / tau) / Z`` (Gibbs variational principle), whose objective value is ``tau log Z``.
For a mixture of isotropic Gaussians ``p_data = sum_k pi_k N(mu_k, s_k^2 I)`` and a linear reward
``f(x) = theta . x``, completing the square in each component gives another mixture (:func:`tilt`):

* means ``mu_k + s_k^2 theta / tau``;
* weights ``pi_k exp(theta . mu_k / tau + s_k^2 |theta|^2 / (2 tau^2))``, normalised;

so the score of the *noised* tilted law ``p*_t`` is exact at every noise level, and any guidance
rule can be compared with it. Three score fields are built here from a :class:`~studio.core.toy2d.GMM`:

* :func:`gradient_guided_score`: ``grad log p_t(x) + eta grad_x f(x0_hat(x))``, the reward's gradient
  taken at the Tweedie look-ahead ``x0_hat = E[x0 | x_t = x]`` and pulled back through it by autograd.
  ``grad log p*_t = grad log p_t + grad_x log E[exp(f(x0)/tau) | x_t = x]``; replacing the conditional
  expectation by ``exp(f(x0_hat)/tau)`` (Jensen's gap dropped) gives this rule with ``eta = 1/tau``,
  which is exact when ``p_data`` is one Gaussian (the posterior covariance is then constant in ``x``)
  and not for a mixture (it misses the reweighting of the components);
* :func:`naive_tilt_score`: ``grad log p_t(x) + eta grad f(x)`` at every ``t``: the tilt of the data
  law at ``t = 0`` applied unchanged to the noised laws, which is not ``grad log p*_t`` for ``t > 0``;
* :func:`cfg_score`: classifier-free guidance ``grad log p_t(x) + (1 + eta) grad log p_t(y | x)``.

Plus what the notebook measures: a probability-flow integrator that carries the exact log-density of
its samples (:func:`flow_with_log_density`, instantaneous change of variables with the exact 2-D
divergence), so ``E_q[f] - tau KL(q || p_data)`` is measured for any sampler; the energy distance of
samples to a mixture with the cross term in closed form (:func:`energy_distance_to`) and between two
mixtures exactly (:func:`gmm_energy_distance`); the share of samples off the data's support
(:func:`off_support`); and two score estimators from ``n`` samples: a Gaussian kernel density
estimate (:func:`kde`, a mixture of ``n`` components) and an EM fit of a ``K``-component spherical
mixture (:func:`fit_em`, scikit-learn).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from studio.core.flows2d import divergence, gaussian_log_prior
from studio.core.toy2d import DTYPE, GMM, Path, ode, prior, velocity

Score = Callable[[torch.Tensor, float], torch.Tensor]
Reward = Callable[[torch.Tensor], torch.Tensor]


# --- the exact tilt -------------------------------------------------------------------------------

def linear_reward(theta) -> Reward:
    """``f(x) = theta . x`` for (n, d) points."""
    theta = torch.as_tensor(theta, dtype=DTYPE)
    return lambda x: x @ theta.to(x.dtype)


def _tilt_logits(gmm: GMM, theta: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.log(gmm.weights) + gmm.means @ theta / tau + gmm.stds ** 2 * (theta @ theta) / (2 * tau ** 2)


def tilt(gmm: GMM, theta, tau: float) -> GMM:
    """The exact ``p* = gmm exp(theta . x / tau) / Z``: again a mixture (module docstring)."""
    theta = torch.as_tensor(theta, dtype=DTYPE)
    means = gmm.means + (gmm.stds ** 2)[:, None] * theta / tau
    return GMM(means, gmm.stds, torch.softmax(_tilt_logits(gmm, theta, tau), 0))


def log_normaliser(gmm: GMM, theta, tau: float) -> float:
    """``log Z = log E_{p_data} exp(theta . x / tau)``; the optimal objective is ``tau log Z``."""
    theta = torch.as_tensor(theta, dtype=DTYPE)
    return float(torch.logsumexp(_tilt_logits(gmm, theta, tau), 0))


def noised(gmm: GMM, alpha: float, sigma: float) -> GMM:
    """The law of ``alpha x0 + sigma eps`` for ``x0 ~ gmm``."""
    return GMM(alpha * gmm.means, torch.sqrt(alpha ** 2 * gmm.stds ** 2 + sigma ** 2), gmm.weights)


# --- score fields ---------------------------------------------------------------------------------

def score(gmm: GMM, path: Path) -> Score:
    """The exact ``grad log p_t`` of ``gmm`` along ``path``."""
    return lambda x, t: gmm.score(x, path.alpha(t), path.sigma(t))


def _grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``grad_x sum fn(x)``; differentiable itself when ``x`` is part of a graph (for a divergence)."""
    outer = x.requires_grad
    with torch.enable_grad():
        xi = x if outer else x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xi).sum(), xi, create_graph=outer)
    return g


def gradient_guided_score(gmm: GMM, reward: Reward, eta: float, path: Path) -> Score:
    """``grad log p_t(x) + eta grad_x f(x0_hat(x))`` with ``x0_hat`` the exact posterior mean (autograd
    through Tweedie's formula). ``eta = 0`` is the unguided score."""
    def s(x, t):
        a, sig = path.alpha(t), path.sigma(t)
        base = gmm.score(x, a, sig)
        if eta == 0:
            return base
        return base + eta * _grad(lambda z: reward(gmm.denoise(z, a, sig)), x)
    return s


def naive_tilt_score(gmm: GMM, reward: Reward, eta: float, path: Path) -> Score:
    """``grad log p_t(x) + eta grad f(x)`` at every noise level (the clean-data tilt, not the noised one)."""
    def s(x, t):
        base = gmm.score(x, path.alpha(t), path.sigma(t))
        return base + eta * _grad(reward, x)
    return s


def cfg_score(uncond: GMM, cond: GMM, eta: float, path: Path) -> Score:
    """``grad log p_t(x) + (1 + eta) grad log p_t(y | x)``, ``grad log p_t(y | x) = s_cond - s_uncond``:
    ``eta = 0`` is the conditional score, ``eta = -1`` the unconditional one."""
    def s(x, t):
        a, sig = path.alpha(t), path.sigma(t)
        su = uncond.score(x, a, sig)
        return su + (1 + eta) * (cond.score(x, a, sig) - su)
    return s


# --- sampling with the exact log-density -----------------------------------------------------------

def pf_velocity(score_fn: Score, path: Path) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The probability-flow velocity ``f x - g^2 s / 2`` of a score field (:func:`studio.core.toy2d.velocity`)."""
    return velocity(score_fn, "score", path)


def flow_with_log_density(score_fn: Score, path: Path, x: torch.Tensor, steps: int = 100
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the probability-flow ODE of ``score_fn`` from the prior at ``t_max`` to ``t_min`` (Heun)
    and carry ``log q`` of each particle by ``d log q / dt = -div v``. Returns the end points and their
    log-density under the law the discretised flow actually produces (up to the divergence's own
    discretisation error)."""
    v = pf_velocity(score_fn, path)
    logq = gaussian_log_prior(path)(x)
    times = path.grid(steps).tolist()
    for t, s in zip(times[:-1], times[1:]):
        d, div = divergence(v, x, t)
        x_e = x + (s - t) * d
        d2, div2 = divergence(v, x_e, s)
        x = x + (s - t) * 0.5 * (d + d2)
        logq = logq - (s - t) * 0.5 * (div + div2)
    return x, logq


def sample(score_fn: Score, path: Path, n: int, steps: int = 100, seed: int = 0, dim: int = 2) -> torch.Tensor:
    """``n`` end points of the probability-flow ODE (Heun) from the prior, without the log-density."""
    x = prior(n, dim, path, torch.Generator().manual_seed(seed))
    *_, end = ode(pf_velocity(score_fn, path), x, path.grid(steps), heun=True)
    return end


def objective(x: torch.Tensor, logq: torch.Tensor, reward: Reward, data: GMM, tau: float) -> dict[str, float]:
    """``E_q[f] - tau KL(q || data)`` from samples ``x`` with their log-density ``logq``, and its parts."""
    f = reward(x)
    kl = logq - data.log_prob(x)
    per = f - tau * kl
    return {"reward": float(f.mean()), "kl": float(kl.mean()), "objective": float(per.mean()),
            "objective_sd": float(per.std())}


# --- measurements ---------------------------------------------------------------------------------

def _mean_dist(diff_sq: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``E|Z|`` for ``Z ~ N(m, var I_2)`` with ``|m|^2 = diff_sq`` (Rice mean; 2-D only)."""
    var = var.clamp_min(1e-300)
    x = -diff_sq / (2 * var)
    lag = (1 - x) * torch.special.i0e(-x / 2) - x * torch.special.i1e(-x / 2)  # Laguerre L_{1/2}(x)
    return torch.sqrt(var * math.pi / 2) * lag


def _cross(a: GMM, b: GMM) -> torch.Tensor:
    var = a.stds[:, None] ** 2 + b.stds[None, :] ** 2
    return a.weights @ _mean_dist(torch.cdist(a.means, b.means) ** 2, var) @ b.weights


def gmm_energy_distance(a: GMM, b: GMM) -> float:
    """The exact energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two 2-D mixtures."""
    if a.dim != 2 or b.dim != 2:
        raise ValueError("the closed form is written for 2-D mixtures")
    return float(2 * _cross(a, b) - _cross(a, a) - _cross(b, b))


def energy_distance_to(x: torch.Tensor, gmm: GMM) -> float:
    """Unbiased energy distance of samples ``x`` (n, 2) to a 2-D mixture: the sample-to-mixture and
    mixture-to-mixture terms in closed form, the sample-to-sample term as a U-statistic (the diagonal
    left out). Its mean over draws of ``x`` is the true distance, so it can fall below zero."""
    n = x.shape[0]
    point = GMM(x, torch.zeros(n, dtype=x.dtype), torch.full((n,), 1.0 / n, dtype=x.dtype))
    within = torch.cdist(x, x).sum() / (n * (n - 1))
    return float(2 * _cross(point, gmm) - within - _cross(gmm, gmm))


def support_threshold(data: GMM, quantile: float = 0.01, n: int = 20000, seed: int = 0) -> float:
    """The ``quantile`` of ``log p_data`` over data samples: below it a point counts as off the support
    (so the data themselves are off it with probability ``quantile``)."""
    x = data.sample(n, torch.Generator().manual_seed(seed))
    return float(torch.quantile(data.log_prob(x), quantile))


def off_support(x: torch.Tensor, data: GMM, threshold: float) -> float:
    """Share of samples with ``log p_data(x) < threshold``."""
    return float((data.log_prob(x) < threshold).double().mean())


def class_confidence(x: torch.Tensor, classes: list[GMM], priors: list[float], y: int) -> torch.Tensor:
    """The exact ``p(y | x)`` of a mixture of class mixtures at clean data (``t = 0``)."""
    logs = torch.stack([math.log(p) + c.log_prob(x) for c, p in zip(classes, priors)], 1)
    return torch.softmax(logs, 1)[:, y]


# --- score estimators from n samples -----------------------------------------------------------------

def kde(x: torch.Tensor, bandwidth: float) -> GMM:
    """The Gaussian kernel density estimate: the empirical delta mixture smoothed by ``N(0, h^2 I)``."""
    n = x.shape[0]
    return GMM(x.to(DTYPE), torch.full((n,), float(bandwidth), dtype=DTYPE), torch.full((n,), 1.0 / n, dtype=DTYPE))


def fit_em(x: torch.Tensor, components: int, seed: int = 0) -> GMM:
    """A ``components``-component mixture of isotropic Gaussians fitted by EM (scikit-learn's
    ``GaussianMixture(covariance_type="spherical")``, k-means initialisation, 3 restarts)."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(components, covariance_type="spherical", n_init=3, random_state=seed, reg_covar=1e-6)
    gm.fit(x.numpy())
    return GMM(torch.as_tensor(gm.means_, dtype=DTYPE), torch.as_tensor(gm.covariances_, dtype=DTYPE).sqrt(),
               torch.as_tensor(gm.weights_, dtype=DTYPE))
