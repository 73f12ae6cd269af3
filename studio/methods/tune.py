"""Tune: Pairwise Sample Optimization (PSO) of a few-step (timestep-distilled) model, with LoRA.

PSO (Miao et al., ICLR 2025; official code ZichenMiao/Pairwise_Sample_Optimization) tunes a
distilled model by raising the likelihood of target images x_w *relative to* reference images
x_l sampled from the current distilled model, instead of fitting x_w alone with the diffusion
loss (which pulls a few-step model towards blurry conditional means).

* **Offline PSO** (:func:`pso_loss`), as the official DreamBooth script does it: x_w and x_l
  (same condition) are noised with the same noise to one of the distilled timesteps; the model's
  x0 prediction gives the per-sample errors ``L = w(t) mean (x0_hat - x0)^2`` with the EDM-style
  weight ``w = sigma^-2 = alpha_t^2 / sigma_t^2``; ``model_diff = L_w - neg_weight L_l``. Two forms:
  ``dpo``: ``-log sigmoid(beta (ref_diff - model_diff))`` with ``ref_diff`` from the same network
  with the LoRA adapter switched off (Diffusion-DPO's form); ``hinge`` (the released scripts'
  ``pso_db``): ``relu(1 - beta (-model_diff))``, no reference network. Both add
  ``prior_weight * L_l`` (keep fitting the model's own samples). ``neg_weight`` is the official
  code's ``neg_defactor``, 0.1 by default as there: with 1.0 (``L_w - L_l``) the pair term pushes
  the model's error on its *own* samples up so hard that content goes (a 200-sample exploration
  on digits, 150 steps at lr 1e-4: the judge's 4-step accuracy fell from 0.99 to 0.68); with 0.1
  it stayed at 1.00.
* **Online PSO** (:func:`online_pso_loss`): two stochastic few-step trajectories per condition
  from the current model, ranked by a reward; per step the Gaussian log-density of the step taken
  under the model and under the adapter-off model, ratio clipped to [1 - 0.1, 1 + 0.1], loss
  ``-log sigmoid(beta sum_i pref_i log r_i)``, beta 50. The trajectories take LCM's stochastic
  steps (x0, then re-noise: ``x_next ~ N(alpha_next x0_hat(x), sigma_next^2 I)``; the official
  DMD2 script's scheduler), so the step density is exactly Gaussian; everywhere else the model
  samples with deterministic DDIM on the same timesteps (:class:`FewStep`). The reward is :func:`thickness`.
* **Baseline** (:func:`plain_loss`): the ordinary diffusion loss on the targets alone
  (DreamBooth's: epsilon MSE at a uniform timestep), the fine-tuning PSO is meant to replace.

Only LoRA factors train (peft, on the UNet's convolutions, or on ``to_q/to_k/to_v/to_out.0`` for
attention UNets as in the official scripts); the base model is deep-copied first, so the
manager's model is never touched, and the tuned model is a new manager key. The same code drives
a diffusers few-step pipeline (SD-Turbo) through :class:`~studio.core.models.LatentDiffusionModel`
(targets encoded by its VAE, conditions from its text encoder); the tests run it on tiny random
components.

The style measure (:func:`thickness`, :func:`on_style`): a digit's stroke thickness is
``2 x ink area / ink perimeter`` (a stroke of length L and width w has area L w and perimeter
about 2 L), ink being pixels above mid-grey; "on-style" means beyond the 80th (thick) or below
the 20th (thin) percentile of the training digits. It is validated on real digits (the
benchmark and the tests): about 20% of test digits are on-style, and nearly all once dilated.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from studio import __version__
from studio.core.device import MAX_SEED, make_generator
from studio.core.models import DiffusionModel
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import make_scheduler, run_to_end, sample

BASE = "digits-fewstep"
Style = Literal["thick", "thin", "custom"]
LossForm = Literal["dpo", "hinge", "plain"]
STYLE_SETS = {"thick": "the 16 thickest-stroke training digits (at most 2 per class)",
              "thin": "the 16 thinnest-stroke training digits (at most 2 per class)"}
PERCENTILE = {"thick": 80.0, "thin": 20.0}
MIN_TARGETS, MAX_TARGETS = 2, 16
RATIO_CLIP = 0.1  # online PSO's epsilon
ADAPTER = "pso"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


# ----------------------------------------------------------------------------- the style measure

def thickness(x) -> np.ndarray:
    """Stroke thickness ``2 A / P`` of each (N, 1, H, W) image in [-1, 1] (ink: pixels > 0), in pixels."""
    x = torch.as_tensor(x).detach().float().cpu()
    ink = (x[:, 0] > 0).float()
    padded = F.pad(ink, (1, 1, 1, 1))
    area = ink.flatten(1).sum(1)
    perimeter = ((padded[:, 1:, :] - padded[:, :-1, :]).abs().flatten(1).sum(1)
                 + (padded[:, :, 1:] - padded[:, :, :-1]).abs().flatten(1).sum(1))
    return (2 * area / perimeter.clamp(min=1)).numpy()


@lru_cache(maxsize=None)
def style_threshold(style: str) -> float:
    """The training digits' 80th (thick) or 20th (thin) percentile of :func:`thickness`."""
    from studio.data import digits

    return float(np.percentile(thickness(digits.load("train").images), PERCENTILE[style]))


def on_style(x, style: str) -> np.ndarray:
    """Whether each image is on-style (beyond the training digits' percentile for ``style``)."""
    t = thickness(x)
    return t >= style_threshold(style) if style == "thick" else t <= style_threshold(style)


def style_set(style: str, n: int = 16, per_class: int = 2) -> tuple[torch.Tensor, list[int]]:
    """A bundled target set: the ``n`` most on-style training digits, at most ``per_class`` of each class."""
    from studio.data import digits

    if style not in STYLE_SETS:
        raise ParamError(f"unknown style set {style!r}; choose one of {', '.join(STYLE_SETS)}")
    train = digits.load("train")
    score = thickness(train.images)
    order = np.argsort(-score if style == "thick" else score, kind="stable")
    picked, count = [], {}
    for i in order:
        c = int(train.labels[i])
        if count.get(c, 0) < per_class:
            picked.append(i)
            count[c] = count.get(c, 0) + 1
        if len(picked) == n:
            break
    return torch.from_numpy(train.images[picked]).float(), [int(train.labels[i]) for i in picked]


def dilate(x: torch.Tensor) -> torch.Tensor:
    """Thicken strokes by one pixel (3 x 3 max filter): the style measure's validation."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


# ----------------------------------------------------------------------------- few-step model

class FewStep:
    """A distilled model as PSO drives it: x0 predictions at any timesteps, few-step sampling.

    ``dm`` is a zoo :class:`DiffusionModel` (``digits-fewstep``: x0 prediction) or a latent text
    model (SD-Turbo: epsilon); ``unet`` is the network to run (a LoRA-wrapped copy of ``dm.unet``).
    Sampling is deterministic DDIM on the distilled timesteps (trailing spacing: 999, 749, 499, 249
    at 4 steps; 999, 499 at 2; 999 at 1), so only step counts that divide ``steps`` land on them.
    """

    def __init__(self, dm: DiffusionModel, unet: torch.nn.Module | None = None, steps: int = 4):
        self.dm, self.unet = dm, unet if unet is not None else dm.unet
        self.max_steps = steps
        self.step_counts = tuple(n for n in range(1, steps + 1) if steps % n == 0)
        self.scheduler = self.make_scheduler()
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.clone().long()
        self.clip = bool(self.scheduler.config.get("clip_sample", False))  # the sampler clips x0 to [-1, 1]
        abar = self.scheduler.alphas_cumprod.float()
        self.alpha, self.sigma = abar.sqrt(), (1 - abar).sqrt()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def condition(self, labels: list) -> dict[str, torch.Tensor]:
        """UNet keyword arguments for per-image conditions: class ints, or prompts for text models."""
        if self.dm.conditioning == "text":
            return {k: v.to(self.device) for k, v in self.dm.encode_prompts([str(p) for p in labels]).items()}
        if self.dm.conditioning == "class":
            return {"class_labels": torch.as_tensor([int(c) for c in labels], device=self.device)}
        return {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model space (a latent model's VAE mean, scaled; else the identity)."""
        vae = getattr(self.dm, "vae", None)
        if vae is None:
            return images.to(self.device)
        with torch.no_grad():
            return vae.encode(images.to(self.device)).latent_dist.mean * vae.config.scaling_factor

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The network's x0 prediction at per-sample timesteps ``t`` (B,)."""
        pred = self.unet(x_t, t, **cond).sample
        a, s = _col(self.alpha.to(x_t.device)[t]), _col(self.sigma.to(x_t.device)[t])
        kind = self.dm.prediction_type
        if kind == "epsilon":
            return (x_t - s * pred) / a
        if kind == "v_prediction":
            return a * x_t - s * pred
        return pred

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _col(self.alpha.to(x0.device)[t]) * x0 + _col(self.sigma.to(x0.device)[t]) * noise

    def make_scheduler(self):
        return make_scheduler("ddim", self.dm.scheduler_config, self.dm.prediction_type, timestep_spacing="trailing",
                              steps_offset=0)

    @torch.no_grad()
    def sample(self, labels: list, seeds: list[int], steps: int, decode: bool = True) -> torch.Tensor:
        """Few-step samples (one per label, image i from ``seeds[i]``), on the CPU."""
        if steps not in self.step_counts:
            raise ParamError(f"a {self.max_steps}-step model samples at {', '.join(map(str, self.step_counts))} "
                             f"steps (its distilled timesteps), got {steps}")
        cond = self.condition(labels)
        shape = (len(labels), *self.dm.sample_shape)
        x = run_to_end(sample(lambda x_t, t: self.unet(x_t, t, **cond).sample, self.make_scheduler(), shape,
                              num_inference_steps=steps, generator=[make_generator(s) for s in seeds],
                              device=self.device, prediction_type=self.dm.prediction_type))
        return (self.dm.decode(x) if decode else x).cpu()


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * 3))


# ----------------------------------------------------------------------------- LoRA

def lora_targets(unet: torch.nn.Module) -> list[str]:
    """The official scripts' attention projections when the UNet has attention, else every
    ResNet convolution (the digits UNet has no attention)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in unet.named_modules()}
    if "to_q" in names:
        return ["to_q", "to_k", "to_v", "to_out.0"]
    return ["conv1", "conv2"]


def with_lora(unet: torch.nn.Module, rank: int, seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``unet`` with a peft LoRA adapter (alpha = rank, Gaussian init, as the official
    scripts); only the LoRA factors train. The original is never modified."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    net = copy.deepcopy(unet).float().requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=lora_targets(net))
    net = inject_adapter_in_model(config, net, adapter_name=ADAPTER)
    net.lora_rank = rank
    return net


@contextlib.contextmanager
def adapter_off(unet: torch.nn.Module):
    """The base model: every LoRA layer of ``unet`` switched off inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m in layers:
            m.enable_adapters(True)


def lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}


def load_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], rank: int) -> torch.nn.Module:
    """``unet`` copied and given a LoRA adapter holding ``state`` (from :func:`lora_state`)."""
    from peft.utils import set_peft_model_state_dict

    net = with_lora(unet, rank)
    result = set_peft_model_state_dict(net, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"the adapter does not fit this model: {len(result.unexpected_keys)} unknown tensors")
    return net.eval()


def trainable(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


# ----------------------------------------------------------------------------- the losses

def pair_errors(fs: FewStep, x_w: torch.Tensor, x_l: torch.Tensor, cond: dict, t: torch.Tensor,
                noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``w(t) mean (x0_hat - x0)^2`` of targets and references, noised with the same noise."""
    b = x_w.shape[0]
    x_t = fs.noised(torch.cat([x_w, x_l]), torch.cat([t, t]), torch.cat([noise, noise]))
    cond2 = {k: torch.cat([v, v]) for k, v in cond.items()}
    err = ((fs.x0(x_t, torch.cat([t, t]), cond2) - torch.cat([x_w, x_l])) ** 2).flatten(1).mean(1)
    weight = (fs.alpha.to(t.device)[t] / fs.sigma.to(t.device)[t]) ** 2  # sigma_VE^-2
    err = err * torch.cat([weight, weight])
    return err[:b], err[b:]


def pso_loss(l_w: torch.Tensor, l_l: torch.Tensor, ref_w: torch.Tensor | None, ref_l: torch.Tensor | None, *,
             form: str, beta: float, prior_weight: float, neg_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Offline PSO's loss (batch mean) and its parts, from per-sample errors (model and, for ``dpo``, reference)."""
    model_diff = l_w - neg_weight * l_l
    if form == "dpo":
        ref_diff = ref_w - neg_weight * ref_l
        pair = -F.logsigmoid(beta * (ref_diff - model_diff))
    elif form == "hinge":
        pair = F.relu(1 - beta * (-model_diff))
    else:
        raise ValueError(f"unknown PSO loss form {form!r}")
    loss = pair.mean() + prior_weight * l_l.mean()
    return {"loss": loss, "pair": pair.mean().detach(), "L_w": l_w.mean().detach(), "L_l": l_l.mean().detach()}


def plain_loss(fs: FewStep, x_w: torch.Tensor, cond: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The ordinary diffusion (DreamBooth) loss on the targets: epsilon MSE at a uniform timestep."""
    b = x_w.shape[0]
    t = torch.randint(0, len(fs.alpha), (b,), generator=gen).to(x_w.device)
    noise = torch.randn(x_w.shape, generator=gen).to(x_w.device)
    x_t = fs.noised(x_w, t, noise)
    eps_hat = (x_t - _col(fs.alpha.to(t.device)[t]) * fs.x0(x_t, t, cond)) / _col(fs.sigma.to(t.device)[t])
    loss = ((eps_hat - noise) ** 2).mean()
    return {"loss": loss, "L_w": loss.detach()}


def trajectories(fs: FewStep, labels: list, gen: torch.Generator, steps: int) -> dict[str, torch.Tensor]:
    """Stochastic LCM trajectories of the current model: states x_k, next states x_{k+1}, timesteps
    (the last, deterministic step is not a Gaussian step and is returned only as the sample)."""
    fs.scheduler.set_timesteps(steps)
    ts = fs.scheduler.timesteps.long().tolist()
    cond = fs.condition(labels)
    x = torch.randn(len(labels), *fs.dm.sample_shape, generator=gen).to(fs.device)
    states, nexts, times = [], [], []
    with torch.no_grad():
        for i, t in enumerate(ts):
            tt = torch.full((len(labels),), t, device=fs.device)
            x0 = fs.x0(x, tt, cond)
            x0 = x0.clamp(-1, 1) if fs.clip else x0
            if i + 1 == len(ts):
                break
            nxt = ts[i + 1]
            x_next = fs.alpha[nxt] * x0 + fs.sigma[nxt] * torch.randn(x.shape, generator=gen).to(fs.device)
            states.append(x), nexts.append(x_next), times.append(tt)
            x = x_next
    return {"states": torch.stack(states) if states else None, "nexts": torch.stack(nexts) if nexts else None,
            "times": torch.stack(times) if times else None, "sample": x0, "timesteps": ts}


def step_log_ratio(fs: FewStep, x: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, t_next: int,
                   cond: dict) -> torch.Tensor:
    """log p_theta(x_next | x) - log p_ref(x_next | x) of one LCM step (mean over dimensions, as the
    official code averages the Gaussian log-density)."""
    def mean(x0):
        x0 = x0.clamp(-1, 1) if fs.clip else x0
        return fs.alpha[t_next] * x0

    mu = mean(fs.x0(x, t, cond))
    with torch.no_grad(), adapter_off(fs.unet):
        mu_ref = mean(fs.x0(x, t, cond))
    var = fs.sigma[t_next] ** 2
    return (-(x_next - mu) ** 2 + (x_next - mu_ref) ** 2).flatten(1).mean(1) / (2 * var)


def online_pso_loss(log_r1: torch.Tensor, log_r2: torch.Tensor, pref: torch.Tensor, beta: float = 50.0,
                    clip: float = RATIO_CLIP) -> torch.Tensor:
    """``-log sigmoid(beta (pref_1 log r_1 + pref_2 log r_2))`` with ``r`` clipped to [1 - clip, 1 + clip];
    ``pref`` is +1 where trajectory 1 won (then trajectory 2 gets -1)."""
    r1 = log_r1.exp().clamp(1 - clip, 1 + clip).log()
    r2 = log_r2.exp().clamp(1 - clip, 1 + clip).log()
    return -F.logsigmoid(beta * (pref * r1 - pref * r2)).mean()


# ----------------------------------------------------------------------------- a tuning run

@dataclass
class TuneParams:
    base: str = field(default=BASE, metadata=spec("Base model", "The few-step (distilled) model to tune."))
    style: Style = field(default="thick", metadata=spec(
        "Targets", "A bundled style set (16 real digits), or your own drawings / uploads ('custom').",
        choices=("thick", "thin", "custom")))
    loss: LossForm = field(default="dpo", metadata=spec(
        "Loss", "PSO's DPO form (reference: the model with the adapter off), PSO's hinge form (the "
                "released scripts'), or the plain diffusion loss (the baseline PSO replaces).",
        choices=("dpo", "hinge", "plain")))
    beta: float = field(default=200.0, metadata=spec(
        "beta", "How sharply the pair margin counts (DPO: the logistic's slope; hinge: 1/margin).",
        minimum=0.1, maximum=10000.0))
    lora_rank: int = field(default=8, metadata=spec("LoRA rank", "Rank of the LoRA factors (alpha = rank).",
                                                    minimum=1, maximum=64, step=1))
    steps: int = field(default=150, metadata=spec("Training steps", "Optimizer steps (one batch of all targets each).",
                                                  minimum=1, maximum=2000, step=1))
    lr: float = field(default=3e-4, metadata=spec("Learning rate", "AdamW on the LoRA factors.",
                                                  minimum=1e-6, maximum=1e-1, advanced=True))
    prior_weight: float = field(default=0.5, metadata=spec(
        "Prior loss weight", "Weight of L_l, the fit to the model's own samples (against forgetting).",
        minimum=0.0, maximum=10.0, advanced=True))
    neg_weight: float = field(default=0.1, metadata=spec(
        "Reference weight", "model_diff = L_w - this x L_l (the official code's neg_defactor, default 0.1).",
        minimum=0.0, maximum=1.0, advanced=True))
    n_refs: int = field(default=4, metadata=spec("References per target", "Samples of the current model drawn once "
                                                 "per target's condition.", minimum=1, maximum=16, step=1,
                                                 advanced=True))
    validate_every: int = field(default=25, metadata=spec(
        "Validation every", "Draw the fixed-seed validation grid every this many steps.",
        minimum=1, maximum=1000, step=1, advanced=True))
    seed: int = field(default=0, metadata=spec("Seed", "LoRA init, references, noises and validation seeds.",
                                               minimum=0, maximum=MAX_SEED, step=1))


@dataclass
class TrainProgress:
    step: int
    total: int
    losses: dict[str, float]
    grid: torch.Tensor | None = None  # validation samples (rows: classes, columns: 1/2/4 steps)


@dataclass
class Tuned:
    """A finished (or stopped) tuning run: the LoRA-wrapped UNet and what made it."""

    unet: torch.nn.Module
    params: dict
    history: list[dict]
    seconds: float
    targets: torch.Tensor
    labels: list

    def model(self, base: DiffusionModel, name: str) -> DiffusionModel:
        """The tuned model as a manager entry: the base's description with this UNet."""
        tuned = copy.copy(base)
        tuned.name, tuned.unet = name, self.unet.eval()
        tuned.info = {**base.info, "tuned_from": self.params["base"], "pso": self.params}
        return tuned


VALIDATION_STEPS = (1, 2, 4)


def image_shape(dm: DiffusionModel) -> tuple[int, int, int]:
    """(C, H, W) of the model's images: its sample shape, or the VAE's output for a latent model."""
    vae = getattr(dm, "vae", None)
    if vae is None:
        return tuple(dm.sample_shape)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.out_channels, dm.sample_shape[1] * scale, dm.sample_shape[2] * scale)


def check_targets(images: torch.Tensor, labels: list) -> None:
    if len(images) != len(labels):
        raise ParamError(f"{len(images)} target images but {len(labels)} conditions")
    if not MIN_TARGETS <= len(images) <= MAX_TARGETS:
        raise ParamError(f"PSO needs {MIN_TARGETS} to {MAX_TARGETS} target images, got {len(images)}")
    if not torch.isfinite(images).all():
        raise ParamError("the target images contain NaN or infinite values")


def tune(dm: DiffusionModel, images: torch.Tensor, labels: list, p: TuneParams, *,
         validation_labels: list | None = None, stop: Callable[[], bool] = lambda: False
         ) -> Iterator[TrainProgress | Tuned]:
    """Offline PSO (or the plain-loss baseline) of ``dm`` on target ``images`` (N, C, H, W) in [-1, 1]
    with per-image conditions ``labels``. Yields :class:`TrainProgress` each step (with a validation
    grid every ``p.validate_every`` steps and at the start and end), then :class:`Tuned`. ``stop()``
    ends training early; the adapter trained so far is kept."""
    validate(p)
    check_targets(images, labels)
    expected = image_shape(dm)
    if tuple(images.shape[1:]) != expected:
        raise ParamError(f"target images must be {expected} (channels, height, width), got {tuple(images.shape[1:])}")
    t0 = time.perf_counter()
    unet = with_lora(dm.unet, p.lora_rank, p.seed)
    fs = FewStep(dm, unet)
    params = trainable(unet)
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(p.seed)
    device = fs.device
    x_w = fs.encode(images)
    n = len(labels)
    # references: sampled once, before training, from the current (untuned) model, n_refs per target
    ref_labels = [c for c in labels for _ in range(p.n_refs)]
    with torch.no_grad(), adapter_off(unet):
        # kept in model space (a latent model's latents as sampled, not decoded and encoded again)
        refs = fs.sample(ref_labels, [p.seed * 7919 + i for i in range(len(ref_labels))], fs.max_steps,
                         decode=False).to(device)
    refs = refs.view(n, p.n_refs, *refs.shape[1:])
    cond = fs.condition(labels)
    val_labels = validation_labels or sorted(set(labels), key=str)[:8]
    val_seeds = [p.seed + 1000 + i for i in range(len(val_labels))]

    def grid():
        unet.eval()
        rows = torch.stack([fs.sample(val_labels, val_seeds, s) for s in VALIDATION_STEPS], 1)
        unet.train()
        return rows  # (classes, steps, C, H, W)

    history = []
    yield TrainProgress(0, p.steps, {}, grid())
    step = 0
    for step in range(1, p.steps + 1):
        unet.train()
        if p.loss == "plain":
            terms = plain_loss(fs, x_w, cond, gen)
        else:
            pick = torch.randint(0, p.n_refs, (n,), generator=gen)
            x_l = refs[torch.arange(n), pick]
            t = fs.timesteps[torch.randint(0, len(fs.timesteps), (n,), generator=gen)].to(device)
            noise = torch.randn(x_w.shape, generator=gen).to(device)
            l_w, l_l = pair_errors(fs, x_w, x_l, cond, t, noise)
            ref_w = ref_l = None
            if p.loss == "dpo":
                with torch.no_grad(), adapter_off(unet):
                    ref_w, ref_l = pair_errors(fs, x_w, x_l, cond, t, noise)
            terms = pso_loss(l_w, l_l, ref_w, ref_l, form=p.loss, beta=p.beta, prior_weight=p.prior_weight,
                             neg_weight=p.neg_weight)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses = {k: float(v.detach()) for k, v in terms.items()}
        if not all(math.isfinite(v) for v in losses.values()):
            raise ParamError(f"training diverged at step {step} (loss {losses['loss']}); lower the learning rate or beta")
        history.append({"step": step, "seconds": round(time.perf_counter() - t0, 2), **losses})
        last = step == p.steps or stop()
        yield TrainProgress(step, p.steps, losses, grid() if last or step % p.validate_every == 0 else None)
        if last:
            break
    parameters = {"method": "pso", **asdict(p), "trained_steps": step, "targets": [str(c) for c in labels],
                  "studio_version": __version__}
    yield Tuned(unet.eval(), parameters, history, time.perf_counter() - t0, images.cpu(), list(labels))


def run_tune(dm: DiffusionModel, images: torch.Tensor, labels: list, p: TuneParams, **kwargs) -> Tuned:
    """:func:`tune` to the end (notebooks, the benchmark)."""
    return run_to_end(tune(dm, images, labels, p, **kwargs))


def online_step(fs: FewStep, labels: list, reward: Callable[[torch.Tensor], np.ndarray], gen: torch.Generator,
                steps: int = 4, beta: float = 50.0) -> dict[str, torch.Tensor]:
    """One online-PSO objective: two trajectories per condition from the current model, ranked by
    ``reward`` (higher wins; a tie counts the first as the loser, as the official code does)."""
    a, b = trajectories(fs, labels, gen, steps), trajectories(fs, labels, gen, steps)
    r_a, r_b = reward(fs.dm.decode(a["sample"])), reward(fs.dm.decode(b["sample"]))
    pref = torch.as_tensor(np.where(r_a > r_b, 1.0, -1.0), dtype=torch.float32, device=fs.device)
    cond = fs.condition(labels)
    losses = []
    for k in range(len(a["timesteps"]) - 1):
        t_next = a["timesteps"][k + 1]
        lr_a = step_log_ratio(fs, a["states"][k], a["nexts"][k], a["times"][k], t_next, cond)
        lr_b = step_log_ratio(fs, b["states"][k], b["nexts"][k], b["times"][k], t_next, cond)
        losses.append(online_pso_loss(lr_a, lr_b, pref, beta))
    loss = torch.stack(losses).mean() if losses else torch.zeros((), requires_grad=True)
    return {"loss": loss, "reward_gap": torch.as_tensor(np.abs(r_a - r_b).mean())}


def run_online(dm: DiffusionModel, labels: list, reward: Callable[[torch.Tensor], np.ndarray], *, iterations: int,
               rank: int = 8, lr: float = 1e-4, steps: int = 4, beta: float = 50.0, seed: int = 0):
    """Online PSO for ``iterations`` updates (each: fresh trajectory pairs for ``labels``); returns
    (the LoRA-wrapped UNet, per-iteration losses)."""
    unet = with_lora(dm.unet, rank, seed)
    fs = FewStep(dm, unet)
    params = trainable(unet)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(iterations):
        terms = online_step(fs, labels, reward, gen, steps, beta)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    return unet.eval(), history


# ----------------------------------------------------------------------------- saving tuned models

def tuned_dir() -> Path:
    """Where named tuned adapters live: ``$STUDIO_HOME/tuned`` (default ``~/.diffusion-studio/tuned``)."""
    return Path(os.environ.get("STUDIO_HOME", Path.home() / ".diffusion-studio")) / "tuned"


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ParamError("a name is 1 to 40 lower-case letters, digits or '-', starting with a letter or digit")
    return name


def save_tuned(tuned: Tuned, name: str, root: Path | None = None) -> Path:
    """The adapter as safetensors plus its parameters (JSON) in ``<root>/<name>/``; never overwrites."""
    from safetensors.torch import save_file

    name = check_name(name)
    folder = (root or tuned_dir()) / name
    if folder.exists():
        raise ParamError(f"a tuned model named {name!r} already exists; choose another name")
    folder.mkdir(parents=True)
    save_file(lora_state(tuned.unet), folder / "adapter.safetensors")
    (folder / "tuned.json").write_text(json.dumps({**tuned.params, "seconds": round(tuned.seconds, 1)}, indent=2) + "\n")
    return folder


def load_tuned(folder: Path, base: DiffusionModel) -> DiffusionModel:
    """A saved adapter (``adapter.safetensors``, safetensors only) applied to a copy of ``base``."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "tuned.json").read_text())
    unet = load_lora(base.unet, load_file(folder / "adapter.safetensors"), int(meta["lora_rank"]))
    tuned = copy.copy(base)
    tuned.name, tuned.unet = folder.name, unet
    tuned.info = {**base.info, "tuned_from": meta["base"], "pso": meta}
    return tuned


def register_saved(manager, root: Path | None = None) -> list[str]:
    """Register every saved tuned model (``<root>/<name>/``) whose base is a zoo entry; returns the names."""
    from studio.core.loading import load_zoo, read_manifest

    folder_root = root or tuned_dir()
    zoo = read_manifest()
    names = []
    for folder in sorted(folder_root.glob("*/tuned.json")) if folder_root.is_dir() else []:
        folder = folder.parent
        try:
            base = json.loads((folder / "tuned.json").read_text())["base"]
        except (ValueError, KeyError, OSError):
            continue
        if base not in zoo or folder.name in manager or not NAME_RE.match(folder.name):
            continue
        manager.register(folder.name, lambda f=folder, b=base: load_tuned(f, load_zoo(b)),
                         info={**manager.info(base), "tuned_from": base} if base in manager else {"tuned_from": base})
        names.append(folder.name)
    return names
