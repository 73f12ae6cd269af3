"""Guidance hooks: the combination formula, one batched pass, gradient placements."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from studio.core import guidance as G
from tests.conftest import tiny_digits_unet


def model_fn():
    unet = tiny_digits_unet()
    calls = []

    def fn(x, t, cond):
        calls.append(x.shape[0])
        return unet(x, t, **cond).sample

    return fn, calls


def labels(v, n=3):
    return {"class_labels": torch.full((n,), v, dtype=torch.long)}


@torch.no_grad()
def test_cfg_equals_the_combination_formula_in_one_pass():
    fn, calls = model_fn()
    x, t = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    eps_u, eps_c = fn(x, t.expand(3), labels(10)), fn(x, t.expand(3), labels(4))
    calls.clear()
    out = G.cfg(fn, labels(4), labels(10), 2.5)(x, t)
    assert calls == [6]  # uncond and cond evaluated together
    torch.testing.assert_close(out, eps_u + 2.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_combine_many_conditions_with_negative_weights():
    fn, calls = model_fn()
    x, t = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor(300)
    eps = {c: fn(x, t.expand(3), labels(c)) for c in (10, 1, 2, 7)}
    calls.clear()
    out = G.combine(fn, labels(10), [labels(1), labels(2), labels(7)], [1.5, 2.0, -1.0])(x, t)
    assert calls == [12]
    ref = eps[10] + 1.5 * (eps[1] - eps[10]) + 2.0 * (eps[2] - eps[10]) - 1.0 * (eps[7] - eps[10])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        G.combine(fn, labels(10), [labels(1)], [1.0, 2.0])


def _fixed_eps(x, t):
    return 0.3 * x + 0.1


ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


@pytest.mark.parametrize("wrt", ["x_t", "x0_hat"])
@pytest.mark.parametrize("apply", ["eps", "mean"])
def test_zero_gradient_or_zero_scale_is_no_guidance(wrt, apply):
    x, t = torch.randn(2, 1, 4, 4), torch.tensor(400)
    flat = lambda v, t: (v * 0).sum(dim=(1, 2, 3))
    linear = lambda v, t: v.sum(dim=(1, 2, 3))
    for log_prob, scale in ((flat, 3.0), (linear, 0.0)):
        out = G.gradient_guidance(_fixed_eps, log_prob, scale, ALPHAS, wrt=wrt, apply=apply)(x, t)
        torch.testing.assert_close(out, _fixed_eps(x, t))


def test_eps_placement_is_the_ddim_form():
    """eps' = eps - sqrt(1 - abar_t) * s * g, with g = a for log p = <a, x>."""
    x, t, a = torch.randn(2, 1, 4, 4), torch.tensor(250), torch.randn(1, 1, 4, 4)
    for wrt in ("x_t", "x0_hat"):  # a linear log p has the same gradient at x_t and at x0_hat
        out = G.gradient_guidance(_fixed_eps, lambda v, t: (v * a).sum(dim=(1, 2, 3)), 2.0, ALPHAS, wrt=wrt)(x, t)
        torch.testing.assert_close(out, _fixed_eps(x, t) - (1 - ALPHAS[250]).sqrt() * 2.0 * a)


def test_x0_hat_gradient_does_not_backpropagate_through_the_denoiser():
    """log p = -|x0_hat|^2 / 2 has gradient -x0_hat w.r.t. x0_hat; through the denoiser it would differ."""
    x, t = torch.randn(2, 1, 4, 4), torch.tensor(600)
    abar = ALPHAS[600]
    out = G.gradient_guidance(_fixed_eps, lambda v, t: -(v ** 2).sum(dim=(1, 2, 3)) / 2, 1.0, ALPHAS, wrt="x0_hat")(x, t)
    x0_hat = (x - (1 - abar).sqrt() * _fixed_eps(x, t)) / abar.sqrt()
    torch.testing.assert_close(out, _fixed_eps(x, t) + (1 - abar).sqrt() * x0_hat)


def test_mean_placement_adds_s_sigma_g_to_the_ddpm_mean():
    """Ancestral DDPM step with the shifted eps equals mu + s * Sigma_t * g + the same noise."""
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(50)
    t = sched.timesteps[10]
    x, a = torch.randn(2, 1, 4, 4), torch.randn(1, 1, 4, 4)
    guided = G.gradient_guidance(_fixed_eps, lambda v, t: (v * a).sum(dim=(1, 2, 3)), 1.5, sched.alphas_cumprod,
                                 apply="mean", previous_timestep=G.previous_timestep(sched))
    step = lambda eps: sched.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    plain, shifted = step(_fixed_eps(x, t)), step(guided(x, t))
    variance = sched._get_variance(int(t))  # DDPM posterior variance beta_tilde_t (fixed_small)
    torch.testing.assert_close(shifted - plain, 1.5 * variance * a.expand_as(x), atol=1e-5, rtol=1e-4)
