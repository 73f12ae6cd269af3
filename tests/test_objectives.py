"""The training objectives' switches (issue 23): SD3's timestep densities drawn as the paper defines them,
the shift as diffusers' flow-matching scheduler applies it, and the targets of each path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from studio.train import objectives as O


def histogram(t: torch.Tensor, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    counts, edges = np.histogram(t.numpy(), bins=bins, range=(0, 1), density=True)
    return counts, 0.5 * (edges[1:] + edges[:-1])


@pytest.mark.parametrize("density", [O.TimestepDensity("logit-normal", 0.0, 1.0), O.TimestepDensity("logit-normal", 0.5, 0.6),
                                     O.TimestepDensity("cosmap"), O.TimestepDensity("uniform")])
def test_draws_follow_the_papers_densities(density):
    t = O.sample_t(density, 200_000, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    counts, centres = histogram(t)
    expected = O.pdf(density, torch.from_numpy(centres)).numpy()
    assert np.abs(counts - expected).max() < 0.08 * expected.max() + 0.05


def test_mode_sampling_is_uniform_at_scale_0_and_favours_the_middle_with_heavy_tails_above():
    gen = lambda: torch.Generator().manual_seed(3)
    uniform = O.sample_t(O.TimestepDensity("mode", mode_scale=0.0), 1000, gen())
    assert torch.allclose(uniform, 1 - torch.rand(1000, generator=gen()))
    t = O.sample_t(O.TimestepDensity("mode", mode_scale=1.29), 200_000, gen())
    counts, _ = histogram(t, bins=10)
    assert counts[4] > 1.2 and counts[5] > 1.2  # more mass in the middle ...
    assert counts[0] > 0.3 and counts[-1] > 0.3  # ... and still some at both ends (logit-normal has ~none)
    with pytest.raises(ValueError, match="mode_scale"):
        O.TimestepDensity("mode", mode_scale=2.0)


def test_the_shift_is_the_flow_matching_schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    assert torch.allclose(O.shift_t(s, 3.0), sched.sigmas.double(), atol=1e-6)
    assert O.shift_t(torch.tensor(0.5), 3.0) == pytest.approx(0.75)
    shifted = O.sample_t(O.TimestepDensity("uniform", shift=3.0), 100_000, torch.Generator().manual_seed(1))
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01)  # the median maps as the points do


def test_the_rectified_flow_target_is_the_velocity_an_euler_step_follows_to_the_data():
    from diffusers import FlowMatchEulerDiscreteScheduler

    gen = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 1, 4, 4, generator=gen), torch.randn(4, 1, 4, 4, generator=gen)
    t = torch.tensor([0.9, 0.5, 0.2, 0.01])
    x_t, v, timestep = O.rf_example(x0, eps, t)
    assert torch.allclose(timestep, t * 1000)
    tt = t.view(-1, 1, 1, 1)
    assert torch.allclose(x_t - tt * v, x0, atol=1e-6)  # the x0 estimate of the exact velocity
    # the scheduler's Euler step with the exact velocity, from its first sigma to 0, lands on the data
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(1)
    x1 = (1 - sched.sigmas[0]) * x0 + sched.sigmas[0] * eps
    out = sched.step(eps - x0, sched.timesteps[0], x1).prev_sample
    assert torch.allclose(out, x0, atol=1e-5)


def test_the_ddpm_targets_are_the_noise_and_diffusers_velocity():
    from studio.train.diffusion import noise_scheduler

    sched = noise_scheduler()
    gen = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    t = torch.tensor([10, 500, 990])
    x_t, target = O.vp_example(x0, eps, t, sched.alphas_cumprod, "epsilon")
    assert torch.allclose(x_t, sched.add_noise(x0, eps, t), atol=1e-6) and torch.equal(target, eps)
    _, v = O.vp_example(x0, eps, t, sched.alphas_cumprod, "v_prediction")
    assert torch.allclose(v, sched.get_velocity(x0, eps, t), atol=1e-6)
    with pytest.raises(ValueError, match="epsilon or v_prediction"):
        O.vp_example(x0, eps, t, sched.alphas_cumprod, "sample")
    with pytest.raises(ValueError, match="unknown timestep density"):
        O.TimestepDensity("beta")
    assert math.isclose(float(O.pdf(O.TimestepDensity("cosmap"), torch.tensor(0.5))), 4 / math.pi)


@pytest.mark.parametrize("variant", ["v", "rf-lognorm", "rf-cosmap"])
def test_a_digits_objective_trains_exports_and_samples_with_its_own_scheduler(variant, tmp_path, monkeypatch):
    from studio.core.loading import load_folder
    from studio.core.sampling import make_scheduler, run_to_end, sample_images
    from studio.train import common, diffusion
    from tests.conftest import tiny_digits_unet

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path / "runs")
    recipe = diffusion.DigitsRecipe(steps=50, variant=variant)
    recipe.make_model, recipe.batch_size = tiny_digits_unet, 8
    result = diffusion.train(recipe, until=2, export=False, export_to=tmp_path / "model")
    assert result["step"] == 2 and math.isfinite(result["loss"])
    assert (tmp_path / "runs" / f"digits-cond-{variant}" / "state.json").exists()
    dm = load_folder(tmp_path / "model")
    assert dm.prediction_type == recipe.prediction_type == dm.info["prediction_type"]
    scheduler_name = dm.info["default_scheduler"]
    assert scheduler_name == ("flow-euler" if variant.startswith("rf") else "ddim")
    if variant.startswith("rf"):
        assert dm.info["timestep_density"]["name"] == recipe.density.name
    sched = make_scheduler(scheduler_name, dm.scheduler_config, dm.prediction_type)
    x = run_to_end(sample_images(dm, lambda x, t: dm.model_fn(x, t, {"class_labels": torch.tensor([3, 10])}), sched,
                                 [0, 1], num_inference_steps=3))
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="unknown variant"):
        diffusion.DigitsRecipe(variant="bigger")
