"""TSDiff's samplers on a series model (Kollovieh et al., NeurIPS 2023; as the official code,
amazon-science/unconditional-time-series-diffusion, ``sampler/observation_guidance.py`` and
``sampler/refiner.py``), all on :func:`studio.core.sampling.sample` and a diffusers scheduler.

* **Observation self-guidance** (:func:`observation_guidance`). With
  ``x0_hat = (x - sqrt(1 - abar_t) eps(x, t)) / sqrt(abar_t)`` (:func:`~studio.core.sampling.predicted_x0`)
  the energy is ``E = sum over observed entries of l(x0_hat, y)``: squared error (TSDiff-MS) or
  the pinball loss with quantile ``q_i = i / (N + 1)`` for sample i of N (TSDiff-Q). DDPM: after
  each ancestral step, ``x <- x - s sigma_t^2 grad_x E(x, t)`` with the *same* t, sigma_t^2 the
  posterior variance; DDIM: ``eps <- eps + s sqrt(1 - abar_t) grad_x E``. Observed entries are
  the context and every lag value whose source lies before the origin; missing values (NaN)
  are simply unobserved, so the model imputes them.
* **Refinement** (:func:`refine`) of a base forecaster's samples, sorted so sample i is its
  quantile q_i: energy = the sum-reduced epsilon-MSE at one fixed step tau
  (:func:`denoising_loss`; tau is the step whose training loss is nearest the mean over steps,
  chosen when the model is trained: :func:`studio.train.forecast.best_diffusion_step`) + a prior,
  the pinball loss against the base forecast written into the window (``quantile``, the
  default, over the observed entries and the base forecast) or the squared error on observed
  entries (``mse``), as the official ``Refiner.prior``; maximum likelihood (SGD, lr 0.1)
  or Langevin ``y <- y - eta grad E + sqrt(2 eta) 0.1 xi`` (eta 0.1), 20 iterations.
  Entries with no value (outside a short context, NaN in an upload) start from the observed
  values and the base forecast linearly interpolated along time, ends held flat
  (:func:`fill_unobserved`), and the prior leaves them out: only the denoising term moves them.
  (The official code's windows are always fully observed; starting them at 0 with an unmasked
  prior, as before, pulled them to 0.)
* **Synthesis** (:func:`synthesize`): unconditional windows.

Windows are :class:`studio.data.series.Window` s in model space ``(L, C)``: channel 0 the series,
channels 1.. its seasonal lags, divided by the context's mean absolute value.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from studio import lazy
from studio.core.device import make_generator
from studio.core.sampling import Progress, make_scheduler, predicted_x0, sample
from studio.data.series import Window

torch = lazy.load("torch")

# the paper's per-dataset scales run 1 .. 8; MS guidance diverges above ~1 on these small models
# (benchmarks/results/forecast.md: the validation sweeps)
DEFAULT_SCALE = {"quantile": 4.0, "mse": 1.0}
DEFAULT_TAU = 20  # the refiners' step until best_diffusion_step has chosen one (e.g. a model stopped early)


# --------------------------------------------------------------------------------- guidance


def quantile_levels(num_samples: int, batch: int = 1) -> torch.Tensor:
    """``q_i = i / (N + 1)`` for sample i of N, repeated per series: ``(batch * N, 1, 1)``."""
    q = torch.arange(1, num_samples + 1, dtype=torch.float32) / (num_samples + 1)
    return q.repeat(batch)[:, None, None]


def pinball(pred: torch.Tensor, target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    e = target - pred
    return torch.maximum(q * e, (q - 1) * e)


def observation_energy(x0: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, guidance: str,
                       q: torch.Tensor | None) -> torch.Tensor:
    """``E = sum_{observed} l(x0_hat, y)``: squared error (MS) or the pinball loss at q_i (Q)."""
    loss = (x0 - obs) ** 2 if guidance == "mse" else pinball(x0, obs, q)
    return (loss * mask).sum()


SCHEDULER_OPTIONS = {"ddpm": {"variance_type": "fixed_small", "clip_sample": False},  # ancestral, posterior var.
                     "ddim": {"clip_sample": False, "set_alpha_to_one": True}}  # eta 0, final alpha 1


def make_schedulers(model) -> dict:
    """The model's DDPM (ancestral, posterior variance) and DDIM (eta 0, final alpha 1) schedulers."""
    return {name: model_scheduler(model, name) for name in SCHEDULER_OPTIONS}


def model_scheduler(model, sampler: str):
    """One of :func:`make_schedulers`' schedulers, built alone."""
    return make_scheduler(sampler, model.scheduler_config, **SCHEDULER_OPTIONS[sampler])


def observation_guidance(model, windows: list[Window], *, num_samples: int, guidance: str = "quantile",
                         scale: float = DEFAULT_SCALE["quantile"], sampler: str = "ddpm", steps: int | None = None,
                         seed: int = 0) -> Iterator[Progress | torch.Tensor]:
    """TSDiff-MS / TSDiff-Q forecasts of every window (see the module docstring).

    Yields a Progress per step, then the samples ``(len(windows), num_samples, L, C)`` in model
    space (multiply by each window's scale for the series' units).
    """
    sched = model_scheduler(model, sampler)
    T = sched.config.num_train_timesteps
    obs = torch.stack([w.x for w in windows]).repeat_interleave(num_samples, 0)
    mask = torch.stack([w.mask for w in windows]).repeat_interleave(num_samples, 0)
    q = quantile_levels(num_samples, len(windows)) if guidance == "quantile" else None
    abar = sched.alphas_cumprod.float()
    posterior_var = sched.betas.float() * (1 - torch.cat([torch.ones(1), abar[:-1]])) / (1 - abar)

    def eps_and_grad(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """epsilon(x, t) and grad_x E(x0_hat(x, t)) from one forward and backward pass."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = model.eps(x, torch.full((x.shape[0],), t))
            x0 = predicted_x0(sched, eps, x, t, "epsilon")
            grad = torch.autograd.grad(observation_energy(x0, obs, mask, guidance, q), x)[0]
        return eps.detach(), grad

    def plain_eps(x, t):
        with torch.no_grad():
            return model.eps(x, torch.full((x.shape[0],), int(t)))

    if sampler == "ddim":
        def denoise(x, t):
            if not scale:
                return plain_eps(x, t)
            eps, grad = eps_and_grad(x, int(t))
            return eps + scale * (1 - abar[int(t)]).sqrt() * grad
        correct = None
    else:
        denoise = plain_eps

        def correct(x, t):  # after p_sample, at the same t (as the official DDPM guidance)
            t = int(t)
            return x - scale * posterior_var[t] * eps_and_grad(x, t)[1] if scale else x

    n_steps = T if sampler == "ddpm" else (steps or T)
    shape = (len(windows) * num_samples, *windows[0].x.shape)
    with torch.no_grad():
        for item in sample(denoise, sched, shape, num_inference_steps=n_steps, generator=make_generator(seed),
                           correct=correct):
            yield item if isinstance(item, Progress) else item.reshape(len(windows), num_samples, *shape[1:])


# ------------------------------------------------------------------------------- refinement


def denoising_loss(model, x: torch.Tensor, tau: int, generator: torch.Generator, scheduler=None) -> torch.Tensor:
    """Sum-reduced epsilon-MSE at step tau with fresh noise (the official ``p_losses``), the
    scheduler's own ``add_noise``; pass the model's ``scheduler`` (:func:`model_scheduler`) in a loop."""
    scheduler = model_scheduler(model, "ddpm") if scheduler is None else scheduler
    noise = torch.randn(x.shape, generator=generator)
    t = torch.full((x.shape[0],), tau)
    return ((model.eps(scheduler.add_noise(x, noise, t), t) - noise) ** 2).sum()


def fill_unobserved(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``x`` ``(M, L, C)`` with every entry where ``known`` is 0 replaced by the known entries of
    its row and channel linearly interpolated along time (``np.interp``: ends held flat); a
    channel with no known entry takes channel 0's filled values, or the mean of all known
    entries when channel 0 has none either (0 when nothing is known)."""
    xs, ks = x.detach().cpu().numpy().astype(np.float64), known.detach().cpu().numpy() > 0
    out = xs.copy()
    grid = np.arange(xs.shape[1])
    for m in range(xs.shape[0]):
        for c in range(xs.shape[2]):
            k = ks[m, :, c]
            if k.all():
                continue
            if k.any():
                out[m, :, c] = np.where(k, xs[m, :, c], np.interp(grid, grid[k], xs[m, k, c]))
            elif c and ks[m, :, 0].any():
                out[m, :, c] = out[m, :, 0]
            else:
                out[m, :, c] = xs[m][ks[m]].mean() if ks[m].any() else 0.0
    return torch.tensor(out, dtype=x.dtype)


def refine(model, windows: list[Window], init: np.ndarray, *, refiner: str = "lmc", iterations: int = 20,
           tau: int | None = None, prior: str = "quantile", lr: float = 0.1, step_size: float = 0.1,
           noise_scale: float = 0.1, seed: int = 0, trace: list | None = None) -> torch.Tensor:
    """Refine base-forecaster samples ``init`` ``(B, N, H)`` (series units) for each window.

    Returns ``(B, N, L, C)`` in model space. ``trace``, when a list, receives the energy at each
    iteration (the notebook's plot).
    """
    tau = int(model.info.get("tau", DEFAULT_TAU) if tau is None else tau)
    B, N, H = init.shape
    obs = torch.stack([w.x for w in windows]).repeat_interleave(N, 0).clone()
    mask = torch.stack([w.mask for w in windows]).repeat_interleave(N, 0)
    scales = torch.tensor([w.scale for w in windows], dtype=torch.float32).repeat_interleave(N)
    sorted_init = torch.tensor(np.sort(init, axis=1), dtype=torch.float32).reshape(B * N, H)
    obs[:, -H:, 0] = sorted_init / scales[:, None]
    known = mask.clone()  # entries with a value: the observed ones and the base forecast
    known[:, -H:, 0] = 1.0
    obs = fill_unobserved(obs, known)  # the rest start interpolated, free of the prior
    q = quantile_levels(N, B)
    gen = make_generator(seed)
    sched = model_scheduler(model, "ddpm")

    def energy(x):
        # as the official prior: MSE over the observed entries, quantile also over the base forecast
        prior_energy = ((x - obs) ** 2) * mask if prior == "mse" else pinball(x, obs, q) * known
        return denoising_loss(model, x, tau, gen, sched) + prior_energy.sum()

    x = obs.clone()
    with torch.enable_grad():
        if refiner == "ml":
            x.requires_grad_(True)
            opt = torch.optim.SGD([x], lr=lr)
            for _ in range(iterations):
                opt.zero_grad()
                e = energy(x)
                e.backward()
                opt.step()
                if trace is not None:
                    trace.append(e.item())
        else:
            for _ in range(iterations):
                x = x.detach().requires_grad_(True)
                e = energy(x)
                g = torch.autograd.grad(e, x)[0]
                x = x - step_size * g + (2 * step_size) ** 0.5 * noise_scale * torch.randn(x.shape, generator=gen)
                if trace is not None:
                    trace.append(e.item())
    return x.detach().reshape(B, N, *obs.shape[1:])


# -------------------------------------------------------------------------------- synthesis


def synthesize(model, n: int, *, seed: int = 0, sampler: str = "ddpm", steps: int | None = None
               ) -> Iterator[Progress | torch.Tensor]:
    """Unconditional windows ``(n, L, C)`` in model space (mean-scaled units)."""
    sched = model_scheduler(model, sampler)
    L, C = model.info["window"], 1 + len(model.info["lags"])

    def denoise(x, t):
        return model.eps(x, torch.full((x.shape[0],), int(t)))

    with torch.no_grad():
        yield from sample(denoise, sched, (n, L, C), num_inference_steps=steps or sched.config.num_train_timesteps,
                          generator=make_generator(seed))
