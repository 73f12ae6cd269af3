"""Guide: classifier guidance placements, EluCD's tricks, PPAP's experts, on tiny nets and the zoo."""

from __future__ import annotations

import math
import types

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from studio.core import guidance as G
from studio.core.params import ParamError
from studio.core.sampling import run_to_end, sample
from studio.methods import guide
from studio.nets.classifiers import (ExpertBank, GuideNet, build_experts, expert_index, expert_state, lora_config,
                                     lora_targets, make_lora, parameter_count, smoothed)
from tests.contract import MethodContract


def _eps(x, t):
    return 0.3 * x + 0.1


def _linear(a):
    return lambda v, t: (v * a).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("sampler,apply", [("ddim", "eps"), ("ddim", "mean"), ("ddpm", "mean"), ("ddpm", "eps")])
def test_extra_variance_moves_the_next_state_by_exactly_add_s_g(sampler, apply):
    """The sine bump's DDIM placement: an extra variance c shifts x_{t-1} by c * s * g under either sampler."""
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    sched = cls(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(20)
    t = sched.timesteps[7]
    x, a = torch.randn(2, 1, 4, 4), torch.randn(1, 1, 4, 4)
    prev = G.previous_timestep(sched)

    def step(eps):
        kw = {"generator": torch.Generator().manual_seed(3)} if sampler == "ddpm" else {}
        return sched.step(eps, t, x, **kw).prev_sample

    base = G.gradient_guidance(_eps, _linear(a), 1.5, sched.alphas_cumprod, apply=apply, sampler=sampler,
                               previous_timestep=prev)
    bumped = G.gradient_guidance(_eps, _linear(a), 1.5, sched.alphas_cumprod, apply=apply, sampler=sampler,
                                 previous_timestep=prev, extra_variance=lambda ti, v: 0.04)
    torch.testing.assert_close(step(bumped(x, t)) - step(base(x, t)), 0.04 * 1.5 * a.expand_as(x), atol=1e-5, rtol=1e-4)
    if apply == "eps":  # the base placement is still Dhariwal & Nichol's epsilon form
        abar = sched.alphas_cumprod[int(t)]
        torch.testing.assert_close(base(x, t), _eps(x, t) - (1 - abar).sqrt() * 1.5 * a)


def test_clip_x0_clips_before_the_shift():
    """With clip_x0 the guided eps is the clipped-x0 eps shifted; a zero scale gives the clipped eps."""
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    x, t = 3 * torch.randn(2, 1, 4, 4), torch.tensor(300)
    abar = sched.alphas_cumprod[300]
    out = G.gradient_guidance(_eps, _linear(torch.ones(1)), 0.0, sched.alphas_cumprod, clip_x0=True)(x, t)
    x0 = ((x - (1 - abar).sqrt() * out) / abar.sqrt())
    assert x0.abs().max() <= 1 + 1e-5
    assert not torch.allclose(out, _eps(x, t))


def test_previous_timestep_reads_the_schedule():
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(10)
    prev = G.previous_timestep(sched)
    steps = [int(s) for s in sched.timesteps]
    assert [prev(s) for s in steps] == steps[1:] + [-1]


def test_sine_schedule_peaks_mid_trajectory_and_keeps_the_running_max():
    extra = guide.sine_schedule(0.3, 1000)
    assert extra(999, 2.0) == pytest.approx(math.sin(math.pi * 0.999) * 2.0 * 0.3)
    assert extra(500, 1.0) == pytest.approx(0.6)  # max_var stays 2.0 from the first step
    assert extra(0, 0.5) == 0.0


def test_objective_temperatures():
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(guide.guidance_objective(logits, y), logits.log_softmax(-1).gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(guide.guidance_objective(logits, y, 1.0, 0.0), logits.gather(1, y[:, None]).squeeze(1) - math.log(10))


def test_smoothed_replaces_every_relu_and_leaves_the_original():
    net = GuideNet(width=8).eval()
    soft = smoothed(net, 3.0)
    assert not any(isinstance(m, torch.nn.ReLU) for m in soft.modules())
    assert sum(isinstance(m, torch.nn.Softplus) for m in soft.modules()) == sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 7
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(smoothed(net, 1e4)(x), net(x), atol=1e-3, rtol=1e-3)
    assert smoothed(net, float("inf")) is net


def test_expert_index_is_ppaps_inclusive_rule_in_original_timesteps():
    assert [expert_index(t, 5) for t in (0, 199, 200, 201, 400, 401, 999, 1000)] == [0, 0, 0, 1, 1, 2, 4, 4]
    bank = ExpertBank([lambda_net(i) for i in range(5)])
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(10)  # 999, 899, ..., 99: a 10-step run still meets every bin
    used = [int(bank(torch.zeros(1, 1, 16, 16), t)[0, 0]) for t in sched.timesteps]
    assert used == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]


class lambda_net(torch.nn.Module):
    def __init__(self, i):
        super().__init__()
        self.i = i

    def forward(self, x, t):
        return torch.full((x.shape[0], 10), float(self.i))


def test_lora_experts_store_little_and_merge_exactly():
    base = GuideNet(width=32).eval()
    model = make_lora(base, lora_config())
    assert set(lora_targets(base)) == {"stem.0"} | {f"blocks.{i}.conv{j}" for i in range(3) for j in (1, 2)}
    trainable = parameter_count(model, trainable_only=True)
    assert 0 < trainable < 0.25 * parameter_count(base)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "fc." in n or "shortcut.0" in n)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    model.eval()
    x = torch.randn(4, 1, 16, 16)
    state = expert_state(model, lora=True)
    assert all("lora_" in k or ".bn" in k or "stem.1" in k or "shortcut.1" in k for k in state)
    bank = build_experts(base, [state] * 5, "lora")
    torch.testing.assert_close(bank(x, 700), model(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(bank(x, 700), base(x))
    with pytest.raises(ValueError, match="LoRA layout"):
        build_experts(base, [{"bogus.weight": torch.zeros(1)}], "lora")


def test_noise_aware_classifier_needs_t_and_uses_it():
    net = GuideNet(width=8, time_conditional=True).eval()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="timestep"):
        net(x)
    assert not torch.allclose(net(x, 10), net(x, 900))
    torch.testing.assert_close(net(x, torch.tensor([10, 10])), net(x, 10))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("tricks", [guide.NONE, guide.Tricks()], ids=["plain", "elucd"])
def test_guidance_on_a_tiny_diffusers_unet_raises_the_target_probability(sampler, tricks):
    """Model-agnostic: a random diffusers UNet2DModel and a random tiny classifier, nothing from the zoo."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4).eval()
    clf = TinyClassifier().eval()
    denoise = lambda x, t: unet(x, t).sample  # noqa: E731
    target = torch.full((6,), 7)
    results = {}
    for scale in (0.0, 40.0):
        cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        sched = cls(num_train_timesteps=1000, clip_sample=False)
        trace = []
        guided = guide.classifier_guidance(denoise, clf, target, scale, sched.alphas_cumprod, sampler=sampler,
                                           tricks=tricks, previous_timestep=G.previous_timestep(sched), trace=trace)
        with torch.no_grad():
            x = run_to_end(sample(guided, sched, (6, 1, 16, 16), num_inference_steps=10,
                                  generator=torch.Generator().manual_seed(1)))
        results[scale] = clf(x.clamp(-1, 1)).softmax(-1)[:, 7].mean().item()
        assert len(trace) == (10 if scale else 0)
    assert results[40.0] > results[0.0] + 0.2, results


class TinyClassifier(torch.nn.Module):
    """A random linear classifier with a ReLU (so Softplus smoothing has something to replace)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.hidden, self.act, self.out = torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)

    def forward(self, x, t=None):
        return 3 * self.out(self.act(self.hidden(x.flatten(1))))


def test_params_route_tricks_only_to_elucd():
    assert guide.Params(recipe="elucd", sine=False).tricks == guide.Tricks(sine=False)
    assert guide.Params(recipe="noise-aware").tricks == guide.NONE
    assert [t for _, t in guide.LADDER][0] == guide.NONE and guide.LADDER[-1][1] == guide.Tricks()


@pytest.mark.parametrize("bad", [{"scale": float("nan")}, {"scale": 1025.0}, {"target": -1}, {"steps": 0},
                                 {"tau2_ratio": 3.0}, {"recipe": "magic"}])
def test_params_refuse_out_of_range_values(bad):
    from studio.core.params import validate

    with pytest.raises(ParamError):
        validate(guide.Params(**bad))


# --- the shipped zoo --------------------------------------------------------------------------

def _zoo_accuracy(zoo_manager, recipe: str, scale: float, tricks=guide.NONE, steps: int = 25) -> float:
    labels = torch.arange(10).repeat(2)
    with zoo_manager.use(guide.MODEL) as dm, zoo_manager.use(guide.JUDGE) as judge, \
            zoo_manager.use(guide.CLASSIFIER_OF[recipe]) as classifier:
        x = guide.generate(dm, recipe, labels, [300 + i for i in range(len(labels))], scale, steps=steps,
                           tricks=tricks, classifier=classifier)
        return float((judge(x).argmax(-1) == labels).float().mean())


def test_the_shipped_classifiers_steer_the_unconditional_model(zoo_manager):
    """Live, small (20 images, 25 DDPM steps): EluCD and PPAP impose the class; the naive recipe at
    the same scale as EluCD does far worse; without guidance the classes come out at chance."""
    elucd = _zoo_accuracy(zoo_manager, "elucd", guide.DEFAULT_SCALE["elucd"], guide.Tricks())
    naive = _zoo_accuracy(zoo_manager, "naive", guide.DEFAULT_SCALE["elucd"])
    unguided = _zoo_accuracy(zoo_manager, "naive", 0.0)
    ppap = _zoo_accuracy(zoo_manager, "ppap", guide.DEFAULT_SCALE["ppap"])
    assert elucd >= 0.85 and ppap >= 0.8, (elucd, ppap)
    assert naive <= elucd - 0.25 and unguided <= 0.3, (naive, elucd, unguided)


def test_clean_classifier_reads_x0_hat_far_better_than_x_t(zoo_manager):
    """EluCD's calibration argument on the shipped models, at t = 300."""
    with zoo_manager.use(guide.MODEL) as dm, zoo_manager.use("guide-clean") as clean:
        (row,) = guide.accuracy_by_noise(dm, clean, levels=(300,))
    assert row["clean_on_x0_hat"] >= row["clean_on_x_t"] + 0.3, row


class OracleNoise(torch.nn.Module):
    """An epsilon 'UNet' that returns the true noise: accuracy_by_noise's draws, replayed from its seed."""

    def __init__(self, seed: int):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x, t, class_labels=None):
        return types.SimpleNamespace(sample=torch.randn(x.shape, generator=self.gen))


class ExactLookup(torch.nn.Module):
    """A 'classifier' that knows the test digits: the label of the test image x equals (max abs
    difference under 1e-4), else a wrong class."""

    def __init__(self):
        super().__init__()
        from studio.data import digits

        test = digits.load("test")
        self.images, self.labels = torch.from_numpy(test.images).flatten(1), torch.from_numpy(test.labels).long()

    def forward(self, x, t=None):
        dist, idx = torch.cdist(x.flatten(1), self.images, p=float("inf")).min(1)
        label = torch.where(dist < 1e-4, self.labels[idx], (self.labels[idx] + 1) % 10)
        return torch.nn.functional.one_hot(label, 10).float()


def test_accuracy_by_noise_noises_and_denoises_with_the_models_own_schedule():
    """With the true noise as the model's prediction, x0_hat is x0 exactly, whatever schedule the
    model was trained with (here a cosine one, not the digits recipe's linear one). The old code
    noised with the recipe's schedule and denoised with the model's, so x0_hat was wrong."""
    from studio.core.models import DiffusionModel

    cosine = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config)
    dm = DiffusionModel("cosine-oracle", OracleNoise(seed=3), cosine, "epsilon", "class", {"null_class": 10})
    rows = guide.accuracy_by_noise(dm, ExactLookup(), levels=(100, 500, 800), seed=3)
    assert [r["clean_on_x0_hat"] for r in rows] == [1.0, 1.0, 1.0], rows
    assert all(r["clean_on_x_t"] < 0.2 for r in rows), rows  # x_t itself is not a test digit


@torch.no_grad()
def test_shipped_ppap_experts_read_noised_held_out_digits_the_clean_classifier_cannot(zoo_manager):
    """Measured, not read from the MANIFEST: the 360 held-out test digits (never seen by any guide
    classifier; the PPAP experts never saw a real digit at all) noised to t = 300 and t = 500 with
    a fresh noise draw. The clean classifier is near chance there; PPAP's data-free experts, the
    fully fine-tuned ones and the noise-aware classifier all read far better. On the clean digits
    the off-the-shelf classifier is right."""
    from studio.data import digits
    from studio.train.guide import q_sample

    test = digits.load("test")
    x0, y = torch.from_numpy(test.images), torch.from_numpy(test.labels).long()
    names = ("guide-clean", "guide-ppap", "guide-experts", "guide-noisy")
    with zoo_manager.use(names[0]) as clean, zoo_manager.use(names[1]) as ppap, \
            zoo_manager.use(names[2]) as experts, zoo_manager.use(names[3]) as noisy:
        assert float((clean(x0, 0).argmax(-1) == y).float().mean()) >= 0.95
        acc = {}
        for t in (300, 500):
            xt = q_sample(x0, torch.full((len(y),), t), torch.Generator().manual_seed(2027 + t))
            acc[t] = {n: float((net(xt, t).argmax(-1) == y).float().mean())
                      for n, net in zip(names, (clean, ppap, experts, noisy))}
    assert acc[300]["guide-clean"] <= 0.25 and acc[500]["guide-clean"] <= 0.25, acc
    for n in names[1:]:
        assert acc[300][n] >= acc[300]["guide-clean"] + 0.3 and acc[500][n] >= acc[500]["guide-clean"] + 0.1, (n, acc)


def test_conditional_guides_the_model_given_the_target_class(guide_manager):
    """``conditional`` (EluCD's official setting) feeds the target class instead of the null class: at
    scale 0 the run is the plain conditional model, which differs from the unconditional one; the
    PNG parameters record which it was."""
    out = {}
    for conditional in (False, True):
        p = guide.Params(recipe="elucd", scale=0.0, conditional=conditional, steps=3, n_images=2, seed=5,
                         preview_every=0)
        out[conditional] = run_to_end(guide.run(p, guide_manager))
        assert out[conditional].parameters["conditional"] is conditional
    assert not torch.allclose(out[False].tensors, out[True].tensors)


class TestGuideContract(MethodContract):
    method_id = "guide"
    bad = [({"steps": 1}, "Steps"), ({"scale": float("nan")}, "finite"), ({"target": 10}, "Target")]

    @pytest.fixture
    def manager(self, guide_manager):
        return guide_manager

    def params(self):
        return guide.Params(steps=2, n_images=2, preview_every=1, seed=3)
