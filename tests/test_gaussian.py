"""The Gaussian model of a dataset (Wang & Vastola): the fit, the closed-form denoiser and score, and the
probability-flow ODE's exact solution, each checked against an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from studio.core import gaussian


def toy_stats(d: int = 6, seed: int = 0, rank: int | None = None, n: int = 4000) -> tuple[gaussian.GaussianStats, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) / d ** 0.5
    cov = a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=gen, dtype=torch.float64) * 0.3
    x = mean + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return gaussian.fit(x.float().view(n, 1, 2, d // 2), rank=rank), mean, cov


def test_the_fit_recovers_the_mean_and_covariance_and_a_low_rank_fit_keeps_the_rest_as_residual():
    stats, mean, cov = toy_stats(n=20000)
    assert stats.shape == (1, 2, 3) and stats.n_samples == 20000 and stats.residual == 0
    fitted = (stats.eigvecs.double() * stats.eigvals.double()) @ stats.eigvecs.double().T
    assert torch.allclose(stats.mean.double(), mean, atol=0.03) and torch.allclose(fitted, cov, atol=0.03)
    low, *_ = toy_stats(n=20000, rank=2)
    assert low.eigvecs.shape == (6, 2) and torch.allclose(low.eigvals, stats.eigvals[:2])
    assert low.residual == pytest.approx(float(stats.eigvals[2:].mean()), rel=1e-4)
    with pytest.raises(ValueError, match="two samples"):
        gaussian.fit(torch.zeros(1, 3))


def test_the_denoiser_and_score_are_the_gaussian_posterior_by_brute_force():
    stats, *_ = toy_stats()
    cov = ((stats.eigvecs * stats.eigvals) @ stats.eigvecs.T).double()
    mu = stats.mean.double()
    x_t = torch.randn(5, 1, 2, 3, generator=torch.Generator().manual_seed(1))
    for alpha, sigma in ((0.9, 0.4), (0.2, 0.98), (0.0, 1.0)):
        noised = alpha ** 2 * cov + sigma ** 2 * torch.eye(6, dtype=torch.float64)
        flat = x_t.reshape(5, 6).double()
        post = mu + (alpha * cov @ torch.linalg.solve(noised, (flat - alpha * mu).T)).T
        sc = torch.linalg.solve(noised, (alpha * mu - flat).T).T
        assert torch.allclose(gaussian.denoise(stats, x_t, alpha, sigma).reshape(5, 6).double(), post, atol=1e-4)
        assert torch.allclose(gaussian.score(stats, x_t, alpha, sigma).reshape(5, 6).double(), sc, atol=1e-4)


def test_the_closed_form_flow_matches_a_fine_ddim_integration_of_the_exact_denoiser():
    """DDIM with many steps integrates the probability-flow ODE; with the exact Gaussian denoiser it
    must land where the closed form says (a wrong factor in pf_ode fails this)."""
    from diffusers import DDIMScheduler

    stats, *_ = toy_stats()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(1000)
    abar = sched.alphas_cumprod.double()
    x = torch.randn(8, 1, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    start, stop = 999, 300
    st64 = gaussian.GaussianStats(stats.mean.double(), stats.eigvals.double(), stats.eigvecs.double(), 0.0,
                                  stats.shape, stats.n_samples)
    y = x.clone()
    for t in sched.timesteps:
        if int(t) <= stop:
            break
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        eps = (y - a * gaussian.denoise(st64, y, a, s)) / s
        y = sched.step(eps, t, y).prev_sample
    at, st = abar[start].sqrt(), (1 - abar[start]).sqrt()
    a_s, s_s = abar[stop].sqrt(), (1 - abar[stop]).sqrt()
    exact = gaussian.pf_ode(st64, x, at, st, a_s, s_s)
    assert (y - exact).abs().max() < 2e-3
    assert (y - x).abs().max() > 0.1  # the flow did move the points


def test_the_flow_composes_and_starts_at_zero_snr():
    stats, *_ = toy_stats(rank=3)
    x = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(3))
    ab = lambda a: (a, (1 - a * a) ** 0.5)
    direct = gaussian.pf_ode(stats, x, *ab(0.0), *ab(0.8))
    via = gaussian.pf_ode(stats, gaussian.pf_ode(stats, x, *ab(0.0), *ab(0.3)), *ab(0.3), *ab(0.8))
    assert torch.isfinite(direct).all() and torch.allclose(direct, via, atol=1e-5)
    assert torch.allclose(gaussian.pf_ode(stats, x, *ab(0.4), *ab(0.4)), x, atol=1e-6)
    # at the data end (alpha = 1, sigma = 0) the flow lands on the Gaussian's own spread, not on its mean
    end = gaussian.pf_ode(stats, torch.randn(4000, 1, 2, 3, generator=torch.Generator().manual_seed(4)), *ab(0.0), 1.0, 0.0)
    assert torch.allclose(end.reshape(4000, 6).mean(0), stats.mean, atol=0.05)


def test_statistics_round_trip_through_safetensors_and_a_foreign_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    stats, *_ = toy_stats(rank=4)
    stats.save(tmp_path / "gaussian.safetensors")
    back = gaussian.GaussianStats.load(tmp_path / "gaussian.safetensors")
    assert back.shape == stats.shape and back.residual == stats.residual and back.n_samples == stats.n_samples
    assert torch.equal(back.eigvecs, stats.eigvecs)
    save_file({"mean": torch.zeros(3), "eigvals": torch.zeros(1), "eigvecs": torch.zeros(3, 1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a Gaussian statistics file"):
        gaussian.GaussianStats.load(tmp_path / "x.safetensors")


class ExactGaussianModel:
    """A 'model' whose denoiser is the exact one of a Gaussian: teleporting must not change where
    a deterministic sampler lands, only save its first steps."""

    def __init__(self, stats, abar):
        self.stats, self.abar = stats, abar
        self.unet = torch.nn.Linear(1, 1)
        self.sample_shape, self.prediction_type = stats.shape, "epsilon"
        self.calls = 0

    def decode(self, x):
        return x

    def denoise(self, x_in, t, scheduler):
        self.calls += 1
        a = float(self.abar[int(t)]) ** 0.5
        s = (1 - a * a) ** 0.5
        return (x_in - a * gaussian.denoise(self.stats, x_in, a, s)) / s


@pytest.mark.parametrize("name", ["ddim", "dpm++", "euler"])
def test_teleporting_the_first_steps_lands_where_the_full_sampler_does(name):
    from studio.core.sampling import make_scheduler, run_to_end, sample_images
    from studio.train.diffusion import noise_scheduler

    stats, *_ = toy_stats(rank=4)
    config = dict(noise_scheduler().config)
    model = ExactGaussianModel(stats, noise_scheduler().alphas_cumprod)
    steps, skip = 60, 20
    runs = {}
    for k, plan in ((0, None), (skip, (stats, skip)), ("fresh", (stats, skip, True))):
        sched = make_scheduler(name, config, "epsilon")
        model.calls = 0
        runs[k] = run_to_end(sample_images(model, lambda x, t, sched=sched: model.denoise(x, t, sched), sched,
                                           list(range(6)), num_inference_steps=steps, teleport_to=plan))
        assert model.calls == steps - (0 if plan is None else skip)
        if k == "fresh":  # the official continuation where the scheduler takes a custom grid (not DDIM)
            grid = sched.timesteps.tolist()
            assert (grid == sorted(grid, reverse=True) and len(grid) == steps - skip) if name != "ddim" else True
    for k in (skip, "fresh"):
        assert (runs[0] - runs[k]).abs().max() < 0.03, (k, (runs[0] - runs[k]).abs().max())
    with pytest.raises(ValueError, match="skip must be between"):
        run_to_end(sample_images(model, lambda x, t: model.denoise(x, t, None), make_scheduler(name, config), [0],
                                 num_inference_steps=steps, teleport_to=(stats, steps)))


def test_generate_teleports_on_a_zoo_model_and_says_why_it_cannot_elsewhere(zoo_manager, tiny_manager):
    from studio.core.params import ParamError
    from studio.core.sampling import SchedulerError
    from studio.methods import generate

    p = generate.Params(model="digits-cond", scheduler="ddim", steps=8, teleport=3, n_images=2, preview_every=0)
    *progress, r = generate.run(p, zoo_manager)
    assert progress[-1].total == 5 and r.parameters["teleport"] == 3
    with zoo_manager.use("digits-cond") as dm:
        assert dm.gaussian.shape == dm.sample_shape and dm.gaussian.n_samples == 1437
    with pytest.raises(SchedulerError, match="leaves none"):
        list(generate.run(generate.Params(model="digits-cond", steps=8, teleport=8), zoo_manager))
    with pytest.raises(SchedulerError, match="no Gaussian statistics"):
        list(generate.run(generate.Params(model="digits-cond", steps=8, teleport=2), tiny_manager))
    with pytest.raises(ParamError):
        generate.check(generate.Params(teleport=-1), tiny_manager)


def test_guide_teleports_its_unconditional_model(zoo_manager):
    from studio.methods import guide

    p = guide.Params(recipe="noise-aware", steps=6, teleport=2, n_images=2, preview_every=0)
    *progress, r = guide.run(p, zoo_manager)
    assert len(progress) == 4 and progress[-1].total == 4 and r.parameters["teleport"] == 2
    assert len(r.trace.timesteps) == 4 and r.tensors.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("tiny_sd_folder", ["epsilon"], indirect=True)
def test_statistics_of_a_user_folder_in_a_pipelines_latent_space_make_it_teleport(tiny_sd_folder, tmp_path, capsys):
    import shutil

    from PIL import Image

    from studio import cli
    from studio.core.loading import load_folder
    from studio.core.sampling import make_scheduler, run_to_end, sample_images, teleport_plan
    from studio.train.gaussian import folder_stats

    model = tmp_path / "tiny-sd"
    shutil.copytree(tiny_sd_folder, model)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # different sizes: each is scaled and centre-cropped to the model's 16 x 16
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"not a png")
    assert cli.main(["train", str(model), "--gaussian-stats", "--images", str(images), "--rank", "8"]) == 0
    printed = capsys.readouterr().out
    assert "broken.png" in printed and str(tmp_path) not in printed.split("{")[0]
    out = json.loads(printed[printed.index("{"):])
    assert out["images"] == 12 and out["shape"] == [4, 8, 8] and out["rank"] == 8
    dm = load_folder(model)
    assert dm.gaussian.shape == dm.sample_shape and dm.gaussian.n_samples == 12
    cond = dm.encode_prompts(["a cat", "a cat"])
    sched = make_scheduler("ddim", dm.scheduler_config, dm.prediction_type)
    x = run_to_end(sample_images(dm, lambda x, t: dm.model_fn(x, t, cond), sched, [0, 1], num_inference_steps=4,
                                 teleport_to=teleport_plan(dm, 2, 4)))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="at least two"):
        folder_stats(model, tmp_path / "tiny-sd" / "unet", rank=8)


def test_teleporting_a_rectified_flow_model_lands_where_flow_euler_does():
    """The same on the rectified-flow path (x_t = (1 - s) x0 + s eps, FlowMatch Euler): the Train tab's models."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from studio.core.sampling import make_scheduler, run_to_end, sample_images

    stats, *_ = toy_stats(rank=4)
    model = ExactGaussianModel(stats, None)
    model.prediction_type = "flow"

    def velocity(x, t):
        model.calls += 1
        s = float(t) / 1000
        x0 = gaussian.denoise(stats, x, 1 - s, s)
        return (x - (1 - s) * x0) / s - x0  # eps - x0

    config = dict(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000).config)
    steps, skip, runs = 60, 20, {}
    for k, plan in ((0, None), (skip, (stats, skip))):
        model.calls = 0
        runs[k] = run_to_end(sample_images(model, velocity, make_scheduler("flow-euler", config, "flow"), list(range(6)),
                                           num_inference_steps=steps, teleport_to=plan))
        assert model.calls == steps - k
    assert (runs[0] - runs[skip]).abs().max() < 0.05, (runs[0] - runs[skip]).abs().max()
