"""TSDiff recipes: one unconditional model per bundled series (``tsdiff-<series>``), and the
"train on my series" path the Forecast tab uses for an uploaded CSV.

As the official recipe: windows of ``context + horizon`` points with seasonal lag channels,
each mean-scaled over its context; epsilon-MSE with t ~ U{0..99}; Adam lr 1e-3, gradient
clipping 0.5, batch 64. **Deviation:** the official runs train for 1000 epochs x 128 batches on
large datasets; the bundled series are a few hundred points, so a recipe runs
:data:`ZOO_STEPS` steps over every window of the training split (everything before the first
backtest origin: the model never sees a backtest target). The refiners' fixed step tau is
chosen at the end as the official ``get_best_diffusion_step`` does (:func:`best_diffusion_step`).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from studio.core.device import make_generator
from studio.core.loading import ZOO_DIR
from studio.core.models import SeriesDiffusion
from studio.core.sampling import Progress
from studio.core.series_sampling import DEFAULT_TAU, denoising_loss, model_scheduler
from studio.data import series as S
from studio.nets.tsdiff import TSDiffNet, tsdiff_scheduler_config
from studio.threads import building
from studio.train.common import (Checkpoint, LossLog, StepLog, Timer, is_main, machine_description, make_accelerator,
                                 optimizer_step, process_seed, weights_digest, write_manifest_entry)

ZOO_STEPS = {"co2": 4000, "elnino": 4000, "sunspots": 2500, "unemployment": 2500}  # fewer windows, fewer steps
UPLOAD_STEPS = 1500
BATCH = 64
LR = 1e-3
GRAD_CLIP = 0.5
ARCH = {"hidden": 64, "blocks": 3, "step_emb": 128, "d_state": 32, "init_skip": False}


def build(series: S.Series, train_end: int, seed: int = 0) -> SeriesDiffusion:
    with building(seed):  # a tab trains this while others load models (studio.threads)
        net = TSDiffNet(channels=1 + len(series.lags), **ARCH)
    info = {"kind": "diffusion", "domain": "series", "model_class": "TSDiffNet", "series": series.name,
            "window": series.window, "horizon": series.horizon, "context": series.context,
            "lags": list(series.lags), "freq": series.freq, "season": series.season, "train_end": train_end,
            "scaling": "mean", "conditioning": "none", "prediction_type": "epsilon"}
    return SeriesDiffusion(name=f"tsdiff-{series.name}", unet=net, scheduler_config=tsdiff_scheduler_config(),
                           info=info)


def best_diffusion_step(model: SeriesDiffusion, windows: torch.Tensor, seed: int = 0, repeats: int = 2) -> int:
    """The step whose mean denoising loss over ``windows`` is nearest the mean over all steps
    (the official ``get_best_diffusion_step``): the refiners' fixed tau."""
    gen = make_generator(seed)
    sched = model_scheduler(model, "ddpm")
    with torch.no_grad():
        losses = np.array([np.mean([float(denoising_loss(model, windows, t, gen, sched)) for _ in range(repeats)])
                           for t in range(sched.config.num_train_timesteps)])
    return int(np.argmin(np.abs(losses - losses.mean())))


@dataclass
class TrainProgress(Progress):
    """A training step: ``step`` of ``total``, the mean loss since the last report, and the model."""

    loss: float = math.nan
    seconds: float = 0.0
    model: SeriesDiffusion | None = None  # the model being trained (live; snapshot() it to keep it)


def train_steps(series: S.Series, *, steps: int, seed: int = 0, train_end: int | None = None,
                checkpoint: Checkpoint | None = None, every: int = 500, report_every: int = 10,
                stop: Callable[[], bool] = lambda: False, accelerator=None
                ) -> Iterator[TrainProgress | tuple[SeriesDiffusion, dict]]:
    """Train a TSDiff model on ``series.values[:train_end]``: yields a :class:`TrainProgress`
    every ``report_every`` steps, then ``(model, log)``. ``stop`` is polled before every step:
    when it answers True training ends there and the model so far still comes out (its tau
    :data:`DEFAULT_TAU`, ``log["stopped"]`` True). A ``checkpoint`` makes it resumable.

    ``accelerator`` (the zoo recipe, :func:`train`; under ``accelerate launch`` several processes):
    each process draws its own windows, noises and steps (process 0: the one-process stream), the
    gradients are averaged, the checkpoint's directory gets ``loss.jsonl`` (the loss per step averaged
    over processes) and only the main process saves. ``stop`` must then answer alike on every process."""
    train_end = series.train_end if train_end is None else train_end
    model = build(series, train_end, seed)
    net = model.unet.train()
    windows = S.training_windows(series.values, train_end, series.window, series.lags, series.context)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = model_scheduler(model, "ddpm")  # the training noise schedule: add_noise
    gen = make_generator(process_seed(seed, accelerator))
    done, timer, losses = 0, Timer(), LossLog()
    if checkpoint is not None and checkpoint.exists():
        state = checkpoint.load({"model": net}, opt)
        done, timer = state["step"], Timer(state["seconds"])
    wrapped, device, steplog = net, None, None
    if accelerator is not None:
        wrapped, opt = accelerator.prepare(net, opt)
        device = accelerator.device
        if checkpoint is not None:
            steplog = StepLog(accelerator, checkpoint.dir, start=done)
    while done < steps and not stop():
        idx = torch.randint(0, len(windows), (min(BATCH, len(windows) * 4),), generator=gen)
        x0 = windows[idx]
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = sched.add_noise(x0, noise, t)
        if device is not None:
            x_t, t, noise = x_t.to(device), t.to(device), noise.to(device)
        loss = ((wrapped(x_t, t) - noise) ** 2).mean()  # the official p_losses, mean
        optimizer_step(loss, opt, net.parameters(), clip=GRAD_CLIP, log=losses, accelerator=accelerator)
        done += 1
        if steplog is not None:
            steplog.write(done, loss)
        if checkpoint is not None and done % every == 0 and is_main(accelerator):
            checkpoint.save(done, timer.seconds, {"model": net}, opt)
        if done % report_every == 0:
            mean = losses.mean(last=report_every)
            yield TrainProgress(done, steps, info={"loss": mean}, loss=mean, seconds=timer.seconds, model=model)
    net.cpu().eval().requires_grad_(False)
    stopped = done < steps
    model.info["tau"] = DEFAULT_TAU if stopped else best_diffusion_step(model, windows[: min(len(windows), 128)],
                                                                        seed=seed)
    log = {"steps": done, "seconds": round(timer.seconds, 1), "windows": len(windows),
           "final_loss": losses.mean(last=200), "tau": model.info["tau"], **({"stopped": True} if stopped else {})}
    model.info["training"] = log
    yield model, log


def snapshot(model: SeriesDiffusion) -> SeriesDiffusion:
    """A frozen eval-mode copy of a model in training (what the tab registers when Stop is pressed)."""
    net = copy.deepcopy(model.unet).eval().requires_grad_(False)
    return SeriesDiffusion(name=model.name, unet=net, scheduler_config=dict(model.scheduler_config),
                           info={**model.info, "tau": model.info.get("tau", DEFAULT_TAU)})


def fit(series: S.Series, *, steps: int, seed: int = 0, train_end: int | None = None,
        checkpoint: Checkpoint | None = None, report: Callable[[TrainProgress], None] | None = None,
        accelerator=None) -> tuple[SeriesDiffusion, dict]:
    """:func:`train_steps` run to the end."""
    for item in train_steps(series, steps=steps, seed=seed, train_end=train_end, checkpoint=checkpoint,
                            accelerator=accelerator):
        if isinstance(item, TrainProgress):
            if report is not None:
                report(item)
        else:
            return item
    raise RuntimeError("training produced no model")


def export(model: SeriesDiffusion, folder: Path) -> None:
    """Write ``model`` in the zoo layout (model/ config + safetensors, scheduler/, studio.json)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.unet.save_pretrained(tmp / "model", safe_serialization=True)
    (tmp / "scheduler").mkdir(parents=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", **model.scheduler_config}, indent=2))
    info = {k: v for k, v in model.info.items() if k != "training"}
    (tmp / "studio.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(name: str, seed: int = 0, steps: int | None = None, zoo: Path = ZOO_DIR) -> dict:
    """Zoo recipe ``tsdiff-<series>``: train on the series' training split and export."""
    series = S.bundled(name.removeprefix("tsdiff-"))
    t0 = time.perf_counter()
    last = [0.0]

    def report(p: TrainProgress) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"{name}: step {p.step}/{p.total} loss {p.loss:.4f}", flush=True)

    accelerator = make_accelerator(find_unused_parameters=True)  # TSDiffNet has parameters no step uses (2 of them)
    model, log = fit(series, steps=steps or ZOO_STEPS[series.name], seed=seed, report=report if accelerator.is_main_process
                     else None, checkpoint=Checkpoint(name), accelerator=accelerator)
    if not accelerator.is_main_process:  # the export is the main process's
        return {"processes": accelerator.num_processes, "weights_sha256": weights_digest(model.unet)}
    export(model, zoo / name)
    params = sum(p.numel() for p in model.unet.parameters())
    return write_manifest_entry(name, {"kind": "diffusion", "recipe": f"studio train {name}",
                                       "machine": machine_description(), "params": params,
                                       "train_seconds": round(time.perf_counter() - t0, 1), **log,
                                       "batch_size": BATCH, "seed": seed})
