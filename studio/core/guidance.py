"""Guidance as wrappers around the model function (never a fork of the sampler).

A *model function* is ``model(x_t, t, cond) -> prediction`` with ``cond`` a dict of tensors
whose first dimension is the batch (``{"class_labels": (B,)}``, ``{"encoder_hidden_states":
(B, L, D), ...}``). Each helper here returns a *denoiser* ``denoise(x_t, t)`` for
:func:`studio.core.sampling.sample`.

* :func:`combine`: ``eps = eps_base + sum_i w_i (eps_i - eps_base)`` from ONE batched forward
  pass of the n + 1 conditions. Classifier-free guidance is the one-condition case with
  ``base`` the null condition; Composable Diffusion's AND / NOT are several weights (w < 0 = NOT).
* :func:`gradient_guidance`: classifier-style guidance with a choice of where the gradient is
  taken (``wrt``: the noisy ``x_t``, or the predicted clean image ``x0_hat`` without
  back-propagating through the denoiser) and where it is applied (``apply``: subtracted from
  epsilon, the DDIM form ``eps <- eps - sqrt(1 - abar_t) * s * g`` of Dhariwal & Nichol, or
  added to the DDPM posterior mean ``mu <- mu + s * Sigma_t * g``), always written as the
  epsilon shift that moves the sampler's next state by that much, so the sampler stays untouched.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from studio import lazy
from studio.core.sampling import Denoiser

torch = lazy.load("torch")

Cond = dict[str, "torch.Tensor"]
ModelFn = Callable[["torch.Tensor", "torch.Tensor", Cond], "torch.Tensor"]
LogProb = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (x (B, ...), t) -> (B,)


def cat_conds(conds: Sequence[Cond]) -> Cond:
    """Stack conditions along the batch: every cond must have the same keys."""
    keys = conds[0].keys()
    for c in conds[1:]:
        if c.keys() != keys:
            raise ValueError(f"conditions disagree on keys: {sorted(keys)} vs {sorted(c.keys())}")
    return {k: torch.cat([c[k] for c in conds]) for k in keys}


def bind(model: ModelFn, cond: Cond) -> Denoiser:
    """The plain conditional denoiser: no guidance."""
    return lambda x, t: model(x, t, cond)


def combine(model: ModelFn, base: Cond, conds: Sequence[Cond], weights: Sequence[float],
            batched: bool = True) -> Denoiser:
    """``eps_base + sum_i w_i (eps_i - eps_base)`` with the n + 1 predictions in one forward pass.

    ``batched=False`` makes n + 1 separate passes instead, one per condition, as the official
    Composable Diffusion code does (same result; kept to measure what batching saves).
    """
    if len(conds) != len(weights):
        raise ValueError(f"{len(conds)} conditions but {len(weights)} weights")
    k = len(conds) + 1
    stacked = cat_conds([base, *conds])

    def predictions(x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        t_in = t.expand(x.shape[0]) if t.ndim == 0 else t
        if not batched:
            return [model(x, t_in, c) for c in (base, *conds)]
        return list(model(x.repeat(k, *[1] * (x.ndim - 1)), t_in.repeat(k), stacked).chunk(k))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_base, *eps_i = predictions(x, t)
        result = eps_base
        for w, e in zip(weights, eps_i):
            result = result + w * (e - eps_base)
        return result

    return denoise


def cfg(model: ModelFn, cond: Cond, uncond: Cond, scale: float) -> Denoiser:
    """Classifier-free guidance ``eps_u + s (eps_c - eps_u)``: :func:`combine` with one condition."""
    return combine(model, uncond, [cond], [scale])


def guided(model: ModelFn, cond: Cond, uncond: Cond, scale: float) -> Denoiser:
    """Classifier-free guidance at ``scale`` with no wasted pass: the conditional model alone at 1, the
    unconditional one alone at 0, :func:`cfg` otherwise."""
    if scale == 1.0:
        return bind(model, cond)
    if scale == 0.0:
        return bind(model, uncond)
    return cfg(model, cond, uncond, scale)


def _timestep_index(t: torch.Tensor) -> int:
    return int(t.flatten()[0]) if t.ndim else int(t)


def gradient_guidance(
    denoise: Denoiser,
    log_prob: LogProb,
    scale: float,
    alphas_cumprod: torch.Tensor,
    *,
    wrt: Literal["x_t", "x0_hat"] = "x_t",
    apply: Literal["eps", "mean"] = "eps",
    sampler: Literal["ddpm", "ddim"] = "ddpm",
    previous_timestep: Callable[[int], int] | None = None,
    clip_x0: bool = False,
    extra_variance: Callable[[int, float], float] | None = None,
) -> Denoiser:
    """Classifier guidance around an epsilon denoiser, written as an epsilon shift.

    ``log_prob(x, t)`` returns log p(y | x) per sample (B,); its gradient ``g`` is taken with
    respect to ``x_t`` (a noise-aware classifier) or to ``x0_hat = (x_t - sqrt(1 - abar) eps) /
    sqrt(abar)`` with eps detached (an off-the-shelf clean classifier, EluCD's trick (a)), and
    then used in place of the gradient w.r.t. x_t.

    ``apply="eps"``: ``eps' = eps - sqrt(1 - abar_t) * s * g`` (Dhariwal & Nichol Alg. 2, DDIM form).
    ``apply="mean"``: ``mu' = mu + s * Sigma_t * g`` (Alg. 1) with Sigma_t the DDPM posterior
    variance ``beta_t (1 - abar_prev) / (1 - abar_t)``.

    Both are one rule: a shift of the sampler's next state ``x_{t-1} <- x_{t-1} + V_t * s * g``
    (``V_t = Sigma_t`` for "mean"; for "eps", the shift the epsilon form produces), realised
    through the sampler's own ``D_t = d x_{t-1} / d eps`` (``sampler``: ancestral DDPM or
    deterministic DDIM) as ``eps' = eps + V_t * s * g / D_t``; for DDPM + "mean" that is exactly
    Alg. 1. ``extra_variance(t, V_t)`` adds to V_t (EluCD's sine schedule), which is how the extra
    guidance reaches a DDIM sampler too. ``clip_x0`` clips x0_hat to [-1, 1] before guidance
    (guided-diffusion's ``clip_denoised``); run the scheduler with ``clip_sample=False`` then, so
    the guidance shift is not clipped away. ``previous_timestep(t)`` gives the sampler's next
    timestep (default t - 1).
    """
    if apply not in ("eps", "mean") or wrt not in ("x_t", "x0_hat") or sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown placement wrt={wrt!r}, apply={apply!r}, sampler={sampler!r}")
    prev = previous_timestep or (lambda t: t - 1)

    def denoise_guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = denoise(x, t)
        ti = _timestep_index(t)
        abar = alphas_cumprod[ti].to(x.device, x.dtype)
        if clip_x0:
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        if scale == 0:
            return eps
        with torch.enable_grad():
            if wrt == "x_t":
                var = x.detach().requires_grad_(True)
            else:
                var = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(log_prob(var, t).sum(), var)
        tp = prev(ti)
        abar_prev = alphas_cumprod[tp].to(x.device, x.dtype) if tp >= 0 else torch.ones_like(abar)
        alpha_t = abar / abar_prev
        if sampler == "ddpm":
            d_eps = -(1 - alpha_t) / (alpha_t.sqrt() * (1 - abar).sqrt())
        else:
            d_eps = (1 - abar_prev).sqrt() - (abar_prev / abar).sqrt() * (1 - abar).sqrt()
        variance = (1 - abar_prev) / (1 - abar) * (1 - alpha_t) if apply == "mean" else -d_eps * (1 - abar).sqrt()
        if extra_variance is not None:
            variance = variance + extra_variance(ti, float(variance))
        return eps + variance * scale * g / d_eps

    return denoise_guided


def previous_timestep(scheduler) -> Callable[[int], int]:
    """The timestep a scheduler goes to after ``t`` (-1 after the last), read from its
    ``timesteps`` after ``set_timesteps``; right for DDPM, DDIM and any respacing."""
    def prev(t: int) -> int:
        steps = [int(s) for s in scheduler.timesteps]
        i = steps.index(int(t))
        return steps[i + 1] if i + 1 < len(steps) else -1
    return prev


def x0_guidance(denoise: Denoiser, alphas_cumprod: torch.Tensor, prediction_type: str,
                shift: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Denoiser:
    """Guidance on the predicted clean image, for any of the DDPM-family prediction types.

    From the model output at ``x_t`` it forms ``x0_hat``, moves it to ``x0' = x0_hat + shift(x0_hat, t)``
    (``shift`` sees ``x0_hat`` detached: the denoiser is not back-propagated through, EluCD's trick (a)),
    and returns the output that makes the sampler step from ``x0'`` with the noise estimate consistent with
    ``x_t``: ``eps' = (x_t - sqrt(abar) x0') / sqrt(1 - abar)``, written back as epsilon, v
    (``sqrt(abar) eps' - sqrt(1 - abar) x0'``) or x0 itself. A DDIM step then lands exactly where it would
    from ``x0'``; with zero terminal SNR (abar = 0 at the first step) it needs no division by sqrt(abar).
    """
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"x0 guidance is for epsilon, v_prediction or sample models, not {prediction_type!r}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = denoise(x, t)
        a = alphas_cumprod[_timestep_index(t)].to(x.device, x.dtype)
        if prediction_type == "epsilon":
            x0 = (x - (1 - a).sqrt() * pred) / a.sqrt()
        elif prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * pred
        else:
            x0 = pred
        x0 = x0 + shift(x0.detach(), t)
        if prediction_type == "sample":
            return x0
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return guided
