"""The sampling loop: equal to diffusers' stock pipelines, exact on closed-form denoisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel

from studio.core.sampling import (SCHEDULER_NAMES, Progress, SchedulerError, make_scheduler, predicted_x0, run_to_end,
                                   sample)

BASE = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False).config)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("pipeline_cls,name", [(DDPMPipeline, "ddpm"), (DDIMPipeline, "ddim")])
def test_loop_equals_diffusers_pipeline(pipeline_cls, name):
    unet = tiny_unet()
    config = dict(DDPMScheduler(num_train_timesteps=1000).config)  # clip_sample=True, as stock
    pipe = pipeline_cls(unet=unet, scheduler=make_scheduler(name, config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=10, output_type="np").images
    with torch.no_grad():
        x = run_to_end(sample(lambda x, t: unet(x, t).sample, make_scheduler(name, config), (2, 3, 8, 8),
                              num_inference_steps=10, generator=torch.Generator().manual_seed(7)))
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def point_mass_eps(x0: torch.Tensor, alphas_cumprod: torch.Tensor):
    """The exact epsilon of a data distribution that is one point x0: (x_t - sqrt(a) x0) / sqrt(1 - a)."""
    def denoise(x, t):
        a = alphas_cumprod[int(t)]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return denoise


@pytest.mark.parametrize("name", [n for n in SCHEDULER_NAMES if n != "flow-euler"])
def test_every_scheduler_lands_on_a_point_mass(name):
    """With the exact denoiser of a one-point distribution every sampler must end on that point;
    a loop that forgets scale_model_input / init_noise_sigma (Euler types) lands far away."""
    x0 = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    sched = make_scheduler(name, BASE)
    out = run_to_end(sample(point_mass_eps(x0, sched.alphas_cumprod), sched, x0.shape, num_inference_steps=20,
                            generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(out, x0, atol=2e-3), (name, (out - x0).abs().max())


def test_flow_matching_euler_lands_on_a_point_mass():
    """Flow matching x_s = (1 - s) x0 + s noise has velocity noise - x0 = (x_s - x0) / s."""
    x0 = torch.linspace(-0.5, 0.5, 32).reshape(2, 1, 4, 4)
    flow_base = {"num_train_timesteps": 1000, "shift": 1.0}
    sched = make_scheduler("flow-euler", flow_base, prediction_type="flow")
    denoise = lambda x, t: (x - x0) / (float(t) / 1000)
    out = run_to_end(sample(denoise, sched, x0.shape, num_inference_steps=8, prediction_type="flow",
                            generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(out, x0, atol=1e-4)


def test_scheduler_choice_is_checked():
    with pytest.raises(SchedulerError, match="unknown scheduler"):
        make_scheduler("nope", BASE)
    with pytest.raises(SchedulerError, match="flow-matching"):
        make_scheduler("flow-euler", BASE)
    with pytest.raises(SchedulerError, match="flow-matching model needs"):
        make_scheduler("ddpm", BASE, prediction_type="flow")


def test_progress_records_previews_and_cancellation():
    x0 = torch.zeros(1, 1, 4, 4)
    sched = make_scheduler("ddim", BASE)
    calls = []
    base = point_mass_eps(x0, sched.alphas_cumprod)
    denoise = lambda x, t: (calls.append(int(t)), base(x, t))[1]
    items = list(sample(denoise, sched, x0.shape, num_inference_steps=6, preview_every=2,
                        generator=torch.Generator().manual_seed(0)))
    progress, final = items[:-1], items[-1]
    assert all(isinstance(p, Progress) for p in progress) and isinstance(final, torch.Tensor)
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6] and progress[0].total == 6
    assert [p.preview is not None for p in progress] == [False, True, False, True, False, True]
    assert torch.allclose(progress[1].preview, x0, atol=1e-4)  # exact denoiser: x0 preview is exact
    calls.clear()
    gen = sample(denoise, make_scheduler("ddim", BASE), x0.shape, num_inference_steps=6)
    next(gen), next(gen)
    gen.close()  # the consumer stops: no further model evaluations
    assert len(calls) == 2


def test_same_seed_same_sample_and_per_image_generators():
    unet = tiny_unet()
    fn = lambda x, t: unet(x, t).sample
    with torch.no_grad():
        run = lambda gens, n: run_to_end(sample(fn, make_scheduler("ddpm", BASE), (n, 3, 8, 8), num_inference_steps=4,
                                                 generator=gens))
        a = run([torch.Generator().manual_seed(s) for s in (3, 4)], 2)
        b = run([torch.Generator().manual_seed(4)], 1)
    assert torch.allclose(a[1:], b, atol=1e-5)  # image i of a batch is reproducible alone from its seed


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
def test_predicted_x0_takes_one_timestep_per_sample(prediction_type):
    """A (B,) timestep tensor gives, image by image, what the scalar call gives (the loop's form)."""
    sched = make_scheduler("flow-euler", {"num_train_timesteps": 1000}, prediction_type="flow") \
        if prediction_type == "flow" else make_scheduler("ddpm", BASE)
    x, pred = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.tensor([0, 250, 600, 999])
    batched = predicted_x0(sched, pred, x, t, prediction_type)
    for i in range(4):
        torch.testing.assert_close(batched[i:i + 1], predicted_x0(sched, pred[i:i + 1], x[i:i + 1], t[i], prediction_type),
                                   rtol=0, atol=0)
        torch.testing.assert_close(batched[i:i + 1], predicted_x0(sched, pred[i:i + 1], x[i:i + 1], int(t[i]), prediction_type),
                                   rtol=0, atol=0)


def test_predicted_x0_inverts_the_schedulers_add_noise():
    """x_t = add_noise(x0, eps, t): the epsilon and v forms read x0 back from the true eps / v."""
    sched = make_scheduler("ddpm", BASE)
    x0, eps = torch.rand(5, 1, 4, 4) * 2 - 1, torch.randn(5, 1, 4, 4)
    t = torch.tensor([1, 100, 400, 700, 950])
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(predicted_x0(sched, eps, x_t, t, "epsilon"), x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(predicted_x0(sched, sched.get_velocity(x0, eps, t), x_t, t, "v_prediction"), x0,
                               atol=1e-5, rtol=0)
