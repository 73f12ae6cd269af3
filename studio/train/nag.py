"""Recipe ``studio train nag-digits``: DiffusionNAG's score network and accuracy predictor.

* **Score network** (:class:`~studio.nets.nag.ScoreNet`): denoising score matching on the VE-SDE
  over the operation matrices of the *score split* (:func:`studio.data.nasbench.score_split`), a
  fixed random half of the 15,625 cells (seed 0; novelty is measured against it). Adam lr 1e-3
  (the official 2e-5 with 250k iterations is far beyond a CPU session), batch 256, gradient
  clipping 1.0, EMA 0.999.
* **Predictor** (:class:`~studio.nets.nag.AccuracyPredictor`): MSE on noised cells against the
  shipped ground truth's validation accuracy (:func:`studio.data.nasbench.table`), each batch from
  one task with a fresh draw of the task's per-class image sets (official: Adam lr 1e-3, batch 256).
  ``tasks`` leaves tasks out: the benchmark's transfer predictors never see the task they search.

The losses are the official ones on the VE-SDE (:mod:`studio.nets.ve_sde`): :func:`dsm_loss`
(denoising score matching ``|| sigma s(X_t, sigma) + z ||^2``, summed over the matrix, no
likelihood weighting) and :func:`predictor_loss` (MSE of the predictor on noised cells
``X_t = X_0 + sigma(t) z``).

Both export to the zoo as diffusers-layout folders (``score/``, ``predictor/``) + ``studio.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from studio.core.loading import ZOO_DIR
from studio.data import nasbench
from studio.nets.nag import AccuracyPredictor, ScoreNet
from studio.nets.ve_sde import EPS, sigma
from studio.train.common import (LossLog, StepLog, is_main, make_accelerator, optimizer_step, process_seed,
                                 weights_digest)

NAME = "nag-digits"
TASKS = tuple(nasbench.TASKS)
RECIPE = {"score_steps": 4000, "predictor_steps": 3000, "batch": 256, "lr": 1e-3, "ema": 0.999, "seed": 0}


def noised(x0: torch.Tensor, gen: torch.Generator, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_t, sigma(t), z) with t ~ U(eps, 1) per cell: X_t = X_0 + sigma(t) z (drawn on the CPU, returned on ``device``)."""
    t = torch.rand(len(x0), generator=gen) * (1 - EPS) + EPS
    z = torch.randn(x0.shape, generator=gen)
    s = sigma(t)
    x_t = x0 + s[:, None, None] * z
    return (x_t, s, z) if device is None else (x_t.to(device), s.to(device), z.to(device))


def dsm_loss(score_net, x0: torch.Tensor, gen: torch.Generator, device=None) -> torch.Tensor:
    """Denoising score matching on (B, 8, 7) clean cells: mean over cells of || sigma s(X_t, sigma) + z ||^2."""
    x_t, s, z = noised(x0, gen, device)
    return ((s[:, None, None] * score_net(x_t, s) + z) ** 2).sum((1, 2)).mean()


def predictor_loss(predictor, x0: torch.Tensor, acc: torch.Tensor, task_codes: torch.Tensor,
                   gen: torch.Generator, device=None) -> torch.Tensor:
    """MSE of the predicted accuracy of the noised cells against ``acc`` (B,)."""
    x_t, s, _ = noised(x0, gen, device)
    return torch.nn.functional.mse_loss(predictor(x_t, s, task_codes), acc if device is None else acc.to(device))


def train_score(steps: int = RECIPE["score_steps"], seed: int = 0, progress: bool = True,
                accelerator=None) -> tuple[ScoreNet, list]:
    """The score network (its EMA). With an ``accelerator`` (``accelerate launch``) each process draws its own
    batches (process 0: the one-process stream), gradients are averaged, the EMA follows the shared weights,
    and ``runs/nag-digits/loss.jsonl`` logs the loss per step averaged over processes (``phase: score``)."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = ScoreNet()
    ema = EMAModel(net.parameters(), decay=RECIPE["ema"])
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    x_all = nasbench.encode(nasbench.score_split(seed))
    gen = torch.Generator().manual_seed(process_seed(seed, accelerator))
    log = LossLog()
    model, steplog, device = net, None, torch.device("cpu")
    if accelerator is not None:
        model, opt = accelerator.prepare(net, opt)
        ema.to(accelerator.device)
        steplog, device = StepLog(accelerator, NAME), accelerator.device
    for step in tqdm(range(steps), desc="score network", disable=not (progress and is_main(accelerator))):
        idx = torch.randint(len(x_all), (RECIPE["batch"],), generator=gen)
        loss = dsm_loss(model, x_all[idx], gen, device)
        optimizer_step(loss, opt, net.parameters(), clip=1.0, ema=ema, log=log, accelerator=accelerator)
        if steplog is not None:
            steplog.write(step + 1, loss, phase="score")
    ema.copy_to(net.parameters())
    return net.cpu().eval().requires_grad_(False), log.values


def predictor_rows(tasks, table: dict | None = None) -> dict[str, tuple[list[str], torch.Tensor]]:
    """task -> (cells, validation accuracies) from the ground truth, every cell of a trained class."""
    table = table or nasbench.table()
    out = {}
    for task in tasks:
        rows = table.get(task, {})
        archs = sorted(rows)
        out[task] = (archs, torch.tensor([rows[a]["val_acc"] for a in archs], dtype=torch.float32))
    return out


def train_predictor(tasks=TASKS,
                    steps: int = RECIPE["predictor_steps"], seed: int = 0, progress: bool = True,
                    table: dict | None = None, accelerator=None, log_start: int = 0) -> tuple[AccuracyPredictor, list]:
    """The accuracy predictor; ``accelerator`` as in :func:`train_score` (every process trains on the same task at
    a step, each with its own cells and image sets; loss lines ``phase: predictor``, numbered after ``log_start``)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = AccuracyPredictor()
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    data = {t: (nasbench.encode(a), acc) for t, (a, acc) in predictor_rows(tasks, table).items() if a}
    if not data:
        raise ValueError(f"the ground truth has no rows for {', '.join(tasks)}")
    names = sorted(data)
    gen = torch.Generator().manual_seed(process_seed(seed, accelerator))
    log = LossLog()
    model, steplog, device = net, None, None
    if accelerator is not None:
        model, opt = accelerator.prepare(net, opt)
        steplog, device = StepLog(accelerator, NAME, start=log_start), accelerator.device
    model.train()
    for step in tqdm(range(steps), desc="predictor", disable=not (progress and is_main(accelerator))):
        task = names[step % len(names)]
        x, acc = data[task]
        idx = torch.randint(len(x), (RECIPE["batch"],), generator=gen)
        sets = nasbench.task_sets(task, gen)
        code = net.encode_task(sets if device is None else sets.to(device))
        loss = predictor_loss(model, x[idx], acc[idx], code, gen, device)
        optimizer_step(loss, opt, net.parameters(), clip=1.0, log=log, accelerator=accelerator)
        if steplog is not None:
            steplog.write(log_start + step + 1, loss, phase="predictor")
    return net.cpu().eval().requires_grad_(False), log.values


def export(score: ScoreNet, predictor: AccuracyPredictor, info: dict, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    score.save_pretrained(tmp / "score", safe_serialization=True)
    predictor.save_pretrained(tmp / "predictor", safe_serialization=True)
    (tmp / "studio.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(seed: int = 0, steps: int | None = None, zoo: Path = ZOO_DIR, progress: bool = True) -> dict:
    """Train both networks and export ``nag-digits``; returns the manifest entry."""
    from studio.train.common import machine_description, write_manifest_entry

    t0 = time.perf_counter()
    accelerator = make_accelerator()
    score, score_hist = train_score(steps or RECIPE["score_steps"], seed, progress, accelerator=accelerator)
    predictor, pred_hist = train_predictor(steps=steps or RECIPE["predictor_steps"], seed=seed, progress=progress,
                                           accelerator=accelerator, log_start=len(score_hist))
    if not accelerator.is_main_process:  # the export is the main process's
        return {"processes": accelerator.num_processes, "weights_sha256": weights_digest(score, predictor)}
    table = nasbench.table()
    info = {"kind": "nag", "space": "nas-bench-201", "score_split_seed": seed,
            "predictor_tasks": sorted(table), "predictor_rows": {t: len(v) for t, v in sorted(table.items())}}
    export(score, predictor, info, zoo / NAME)
    return write_manifest_entry(NAME, {
        "kind": "nag", "recipe": f"studio train {NAME}", "seed": seed, "machine": machine_description(),
        "train_seconds": round(time.perf_counter() - t0), "steps": {"score": len(score_hist), "predictor": len(pred_hist)},
        "final_loss": {"score": float(np.mean(score_hist[-100:])), "predictor": float(np.mean(pred_hist[-100:]))},
        "params": sum(p.numel() for p in score.parameters()) + sum(p.numel() for p in predictor.parameters()),
    }, zoo)
