"""Recipe ``studio train nag-digits``: DiffusionNAG's score network and accuracy predictor.

* **Score network** (:class:`~studio.nets.nag.ScoreNet`): denoising score matching on the VE-SDE
  over the operation matrices of the *score split*, a fixed random half of the 15,625 cells (seed
  0; novelty is measured against it). Adam lr 1e-3 (the official 2e-5 with 250k iterations is
  far beyond a CPU session), batch 256, gradient clipping 1.0, EMA 0.999.
* **Predictor** (:class:`~studio.nets.nag.AccuracyPredictor`): MSE on noised cells against the
  shipped ground truth's validation accuracy (:func:`studio.data.nasbench.table`), each batch from
  one task with a fresh draw of the task's per-class image sets (official: Adam lr 1e-3, batch 256).
  ``tasks`` leaves tasks out: the benchmark's transfer predictors never see the task they search.

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
from studio.methods import nag
from studio.nets.nag import AccuracyPredictor, ScoreNet

NAME = "nag-digits"
TASKS = ("all ten", "0-4", "5-9", "even/odd")
RECIPE = {"score_steps": 4000, "predictor_steps": 3000, "batch": 256, "lr": 1e-3, "ema": 0.999, "seed": 0}


def score_split(seed: int = 0) -> list[str]:
    """The score network's training cells: a fixed random half of the space."""
    archs = nasbench.all_archs()
    rng = np.random.default_rng(seed)
    return sorted(archs[i] for i in rng.permutation(len(archs))[:len(archs) // 2])


def train_score(steps: int = RECIPE["score_steps"], seed: int = 0, progress: bool = True) -> tuple[ScoreNet, list]:
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = ScoreNet()
    ema = EMAModel(net.parameters(), decay=RECIPE["ema"])
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    x_all = nag.encode(score_split(seed))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for step in tqdm(range(steps), desc="score network", disable=not progress):
        idx = torch.randint(len(x_all), (RECIPE["batch"],), generator=gen)
        loss = nag.dsm_loss(net, x_all[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.step(net.parameters())
        history.append(loss.item())
    ema.copy_to(net.parameters())
    return net.eval().requires_grad_(False), history


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
                    table: dict | None = None) -> tuple[AccuracyPredictor, list]:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = AccuracyPredictor()
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    data = {t: (nag.encode(a), acc) for t, (a, acc) in predictor_rows(tasks, table).items() if a}
    if not data:
        raise ValueError(f"the ground truth has no rows for {', '.join(tasks)}")
    names = sorted(data)
    gen = torch.Generator().manual_seed(seed)
    history = []
    net.train()
    for step in tqdm(range(steps), desc="predictor", disable=not progress):
        task = names[step % len(names)]
        x, acc = data[task]
        idx = torch.randint(len(x), (RECIPE["batch"],), generator=gen)
        code = net.encode_task(nag.task_sets(task, gen))
        loss = nag.predictor_loss(net, x[idx], acc[idx], code, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        history.append(loss.item())
    return net.eval().requires_grad_(False), history


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
    score, score_hist = train_score(steps or RECIPE["score_steps"], seed, progress)
    predictor, pred_hist = train_predictor(steps=steps or RECIPE["predictor_steps"], seed=seed, progress=progress)
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
