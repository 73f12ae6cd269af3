"""Recipe ``studio train simclr-digits``: the frozen self-supervised encoder REPA aligns to.

SimCLR (Chen et al. 2020) on the 1,437 digits training images only, no labels (the test split is
touched once, by the linear probe that reports the encoder's quality): each step draws ``BATCH``
distinct training digits, makes two views of each through :func:`augment` and minimises the NT-Xent
loss (:func:`studio.nets.ssl.nt_xent`) of the projection head's outputs.

* Augmentations suited to digits (no flips, which turn digits into other symbols or none):
  an integer shift of up to 2 px, a random affine (rotation within +-15 degrees, scale 0.9 to 1.1),
  contrast jitter (ink scaled by 0.6 to 1.4, background kept black) and a brightness lift of up
  to 0.2, a random erase (a 3 to 6 px box set to background, half the views), Gaussian grain of std
  up to 0.15. Colour distortion and blur, SimCLR's strongest pair on ImageNet, have no meaning
  on one-channel 16 x 16 digits; the contrast jitter and grain play their part.
* Temperature 0.2: SimCLR's Table 5 finds 0.1 to 0.5 best and the lower end suits smaller batches;
  chosen before training, not tuned (tuning it on the test probe would grade the choice on the
  figure it reports; there is no separate selection split at this size).
* AdamW (SimCLR uses LARS for its 4096 batches; at batch 256 Adam is the common substitute),
  lr 2e-3 with a 50-step warm-up and a cosine decay, weight decay 1e-4, batch 256 (two views: 512
  images a step), :data:`STEPS` steps (about 9 minutes on one CPU thread).

Under ``accelerate launch`` every process draws its own ``BATCH / num_processes`` digits and its
negatives come from its own share (SimCLR gathers negatives over all devices; a deviation only with
several processes). The gradients are averaged by accelerate; the main process saves.
Resumable from ``runs/simclr-digits``: every step's batch and views come from the seed and the step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.core.loading import ZOO_DIR, load_zoo
from studio.core.metrics import bootstrap_mean
from studio.data import digits
from studio.nets.ssl import DigitsSSLEncoder, nt_xent
from studio.train.common import (LOSS_FILE, Checkpoint, LossLog, StepLog, Timer, machine_description, optimizer_step,
                                 random_shift, weights_digest, write_manifest_entry)

NAME = "simclr-digits"
SEED = 2323
STEPS = 800
BATCH = 256
LR = 2e-3
WARMUP = 50
TEMPERATURE = 0.2
CONFIG = {"dim": 64, "width": 32}
CHECK_EVERY = 100

MAX_SHIFT = 2         # pixels
MAX_ROTATION = 15.0   # degrees
SCALE = (0.9, 1.1)
CONTRAST = (0.6, 1.4)  # ink scaled about the black background
MAX_LIFT = 0.2        # brightness lift
ERASE_SHARE, ERASE_SIZE = 0.5, (3, 6)
MAX_GRAIN = 0.15


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of each (B, 1, 16, 16) digit in [-1, 1] (see the module docstring)."""
    n, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)
    x = random_shift(x, gen, MAX_SHIFT)
    angle = math.radians(MAX_ROTATION) * (2 * u(n) - 1)
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # the grid maps output to input: inverse scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1  # outside: background
    x = (x + 1) * (CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * u(n, 1, 1, 1)) - 1 + MAX_LIFT * u(n, 1, 1, 1)
    erase = u(n) < ERASE_SHARE
    size = torch.randint(ERASE_SIZE[0], ERASE_SIZE[1] + 1, (n, 2), generator=gen)
    corner = (u(n, 2) * (torch.tensor([h, w]) - size + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    box = (((rows[None] >= corner[:, :1]) & (rows[None] < corner[:, :1] + size[:, :1]))[:, :, None]
           & ((cols[None] >= corner[:, 1:]) & (cols[None] < corner[:, 1:] + size[:, 1:]))[:, None, :])
    x = torch.where((box & erase[:, None, None])[:, None], torch.full_like(x, -1.0), x)
    x = x.clamp(-1, 1)
    return x + MAX_GRAIN * u(n, 1, 1, 1) * torch.randn(x.shape, generator=gen)


def lr_at(step: int, steps: int) -> float:
    return LR * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


@torch.no_grad()
def features(encoder: DigitsSSLEncoder, images: np.ndarray, batch: int = 512) -> np.ndarray:
    encoder.eval()
    x = torch.from_numpy(images)
    return torch.cat([encoder.pooled(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """scikit-learn logistic regression (standardised inputs, C = 1) fit on the training digits;
    its hits (0/1) on the test digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(train_x.reshape(len(train_x), -1), train_y)
    return (clf.predict(test_x.reshape(len(test_x), -1)) == test_y).astype(float)


def evaluate(encoder: DigitsSSLEncoder, seed: int = SEED) -> dict:
    """Linear-probe test accuracy of ``pooled`` features; the same probe on raw pixels and on the
    same network at its random initialisation, as context, and the paired differences (the same
    test digits), each with a 95% bootstrap interval. A sanity figure of the encoder, not a judge."""
    train, test = digits.load("train"), digits.load("test")
    torch.manual_seed(seed)
    untrained = DigitsSSLEncoder(**CONFIG)
    ssl = linear_probe(features(encoder, train.images), train.labels, features(encoder, test.images), test.labels)
    raw = linear_probe(train.images, train.labels, test.images, test.labels)
    rand = linear_probe(features(untrained, train.images), train.labels, features(untrained, test.images), test.labels)
    return {"probe_test_accuracy": bootstrap_mean(ssl).to_dict(),
            "probe_raw_pixels": bootstrap_mean(raw).to_dict(),
            "probe_random_init": bootstrap_mean(rand).to_dict(),
            "probe_minus_raw_pixels": bootstrap_mean(ssl - raw).to_dict(),
            "probe_minus_random_init": bootstrap_mean(ssl - rand).to_dict(),
            "probe": "LogisticRegression on standardised features, fit on the 1,437 training digits",
            "test_images": len(test.labels)}


def train(seed: int = 0, steps: int | None = None, minutes: float | None = None, export: bool = True,
          root: Path | None = None, batch: int = BATCH) -> dict:
    """Train (resuming from ``runs/simclr-digits``, or ``root/simclr-digits``) and, with ``export``,
    write the zoo entry and its MANIFEST entry with the probe figures."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    seed, steps = seed or SEED, steps or STEPS
    torch.manual_seed(seed)
    net = DigitsSSLEncoder(**CONFIG)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    ckpt, step, seconds, saved_loss = Checkpoint(NAME, root), 0, 0.0, None
    if ckpt.exists():
        state = ckpt.load({"model": net}, opt)
        step, seconds, saved_loss = state["step"], state["seconds"], state.get("loss")
    model, opt = accelerator.prepare(net, opt)
    data = torch.from_numpy(digits.load("train").images)
    per_process = batch // accelerator.num_processes
    timer, log = Timer(seconds), LossLog()

    def save():
        if accelerator.is_main_process:
            ckpt.save(step, timer.seconds, {"model": accelerator.unwrap_model(model)}, opt,
                      {"loss": log.mean(CHECK_EVERY) if log else saved_loss})

    bar = tqdm(total=steps, initial=step, desc=NAME, disable=not accelerator.is_main_process)
    steps_log = StepLog(accelerator, ckpt.dir, start=step)
    while step < steps and (minutes is None or timer.seconds < minutes * 60):
        model.train()
        rng = np.random.default_rng([seed, step])  # one draw of the global batch, shared by every process
        idx = rng.permutation(len(data))[:batch]
        idx = idx[accelerator.process_index * per_process:(accelerator.process_index + 1) * per_process]
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)) + accelerator.process_index)
        x = data[idx]
        views = torch.cat([augment(x, gen), augment(x, gen)]).to(accelerator.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        z = model(views, project=True)
        loss = nt_xent(z[:len(idx)], z[len(idx):], TEMPERATURE)
        optimizer_step(loss, opt, clip=None, accelerator=accelerator, log=log)
        step += 1
        steps_log.write(step, loss, seconds=round(timer.seconds, 2))  # the mean over processes
        bar.update(1)
        bar.set_postfix(loss=f"{log.mean(20):.3f}")
        if step % CHECK_EVERY == 0:
            save()
    save()
    bar.close()
    seconds = timer.seconds  # training only (a resumed run's earlier sessions included), not the probe below
    result = {"name": NAME, "step": step, "seconds": round(seconds, 1), "loss": log.mean(CHECK_EVERY) if log else saved_loss,
              "processes": accelerator.num_processes, "weights_sha256": weights_digest(accelerator.unwrap_model(model))}
    if export and step >= steps and accelerator.is_main_process:
        encoder = accelerator.unwrap_model(model).eval()
        quality = evaluate(encoder, seed)
        folder = ZOO_DIR / NAME
        encoder.save_pretrained(folder / "model", safe_serialization=True)
        (folder / "studio.json").write_text(json.dumps(
            {"kind": "encoder", "model_class": "DigitsSSLEncoder", "domain": "digits", "method": "simclr",
             "role": "REPA's frozen target (stands in for DINOv2)", "tokens": [DigitsSSLEncoder.grid ** 2, CONFIG["dim"]],
             "temperature": TEMPERATURE}, indent=2) + "\n")
        write_manifest_entry(NAME, {"recipe": f"studio train {NAME}", "kind": "encoder", "train_steps": steps,
                                    "train_seconds": round(seconds, 1), "machine": machine_description(),
                                    "seed": seed, "batch": batch, "params": sum(p.numel() for p in encoder.parameters()),
                                    "quality": quality})
        result.update(quality)
    return result


def load_encoder(zoo: Path = ZOO_DIR) -> DigitsSSLEncoder:
    """The shipped encoder, eval mode, frozen (``requires_grad`` off), as fp32."""
    return load_zoo(NAME, zoo).eval().requires_grad_(False)
