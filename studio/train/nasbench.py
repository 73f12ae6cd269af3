"""Ground truth for the Architectures tab: every NAS-Bench-201 cell trained on digit tasks.

One cell per functional class (:func:`studio.data.nasbench.canonical`: 5,773 classes of the
15,625 cells; the others map onto their class) is trained with one fixed recipe on each task and
its validation and test accuracy, parameters and multiply-accumulates recorded:

* tasks (:data:`TASKS`): all ten digits; digits 0-4; digits 5-9; even vs odd;
* data: scikit-learn digits at their native 8 x 8 (the studio's 16 x 16 images average-pooled);
  the studio's 1,437 training digits split 1,077 / 360 (train / validation, stratified, seed 0),
  the 360 test digits for test accuracy;
* recipe: :class:`studio.nets.nas_cell.CellNet` with C = 8, Adam lr 5e-3, batch 32, 8 epochs,
  seed 0 for every cell (so a cell's figures are reproducible), one CPU thread.

Cells are visited in a fixed random order, all tasks of a cell together, so a partial table is a
uniform sample of the space. Progress is appended line by line to ``runs/nasbench-digits.<i>.csv``
(shard i of n: every n-th cell of the order, so two processes share the work) and a restarted run
skips what is done: ``python -m studio.train.nasbench [--shard i/n] [--limit N]``.
"""

from __future__ import annotations

import csv
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio.data import nasbench

TASKS = {"all ten": tuple(range(10)), "0-4": (0, 1, 2, 3, 4), "5-9": (5, 6, 7, 8, 9), "even/odd": tuple(range(10))}
RECIPE = {"channels": 8, "lr": 5e-3, "batch": 32, "epochs": 8, "seed": 0, "val_size": 360}
FIELDS = ("arch", "task", "val_acc", "test_acc", "params", "flops", "seconds")
ORDER_SEED = 201


def task_data(task: str, split: str):
    """(images (N, 1, 8, 8), targets) of ``task`` on ``split`` ('train', 'val' or 'test')."""
    x, y = _split(split)
    keep = np.isin(y, TASKS[task])
    x, y = x[keep], y[keep]
    if task == "even/odd":
        targets = y % 2
    else:
        targets = np.searchsorted(np.array(TASKS[task]), y)
    return torch.from_numpy(x), torch.from_numpy(targets).long()


def n_classes(task: str) -> int:
    return 2 if task == "even/odd" else len(TASKS[task])


@lru_cache(maxsize=None)
def _split(split: str):
    from sklearn.model_selection import train_test_split

    from studio.data import digits

    def small(images):
        return F.avg_pool2d(torch.from_numpy(images), 2).numpy()

    if split == "test":
        test = digits.load("test")
        return small(test.images), test.labels
    train = digits.load("train")
    idx_train, idx_val = train_test_split(np.arange(len(train.labels)), test_size=RECIPE["val_size"],
                                          random_state=0, stratify=train.labels)
    idx = idx_train if split == "train" else idx_val
    return small(train.images[idx]), train.labels[idx]


def train_cell(arch: str, task: str, recipe: dict = RECIPE) -> dict:
    """Train one cell on one task with the fixed recipe; returns one table row."""
    from studio.nets.nas_cell import CellNet, count_params, flops

    t0 = time.perf_counter()
    torch.manual_seed(recipe["seed"])
    k = n_classes(task)
    net = CellNet(arch, n_classes=k, c=recipe["channels"])
    opt = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
    x, y = task_data(task, "train")
    gen = torch.Generator().manual_seed(recipe["seed"])
    net.train()
    for _ in range(recipe["epochs"]):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe["batch"]):
            idx = perm[i:i + recipe["batch"]]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = {s: float((net(xs).argmax(1) == ys).float().mean()) for s, (xs, ys) in
               (("val", task_data(task, "val")), ("test", task_data(task, "test")))}
    return {"arch": arch, "task": task, "val_acc": round(acc["val"], 4), "test_acc": round(acc["test"], 4),
            "params": count_params(net), "flops": flops(arch, recipe["channels"], k),
            "seconds": round(time.perf_counter() - t0, 2)}


def visit_order() -> list[str]:
    """The classes' representatives (first cell of each class) in a fixed random order."""
    reps = [cells[0] for cells in nasbench.unique_classes().values()]
    rng = np.random.default_rng(ORDER_SEED)
    return [reps[i] for i in rng.permutation(len(reps))]


def done(path: Path) -> set[tuple[str, str]]:
    if not path.exists():
        return set()
    with path.open() as fh:
        return {(row["arch"], row["task"]) for row in csv.DictReader(fh)}


def run(path: Path | None = None, limit: int | None = None, progress: bool = True, shard: tuple[int, int] = (0, 1)
        ) -> Path:
    """Train what is missing of shard ``(i, n)`` (up to ``limit`` cells), appending rows to ``path``."""
    from tqdm.auto import tqdm

    from studio.train.common import RUNS_DIR

    path = path or RUNS_DIR / f"nasbench-digits.{shard[0]}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = done(path)
    mine = visit_order()[shard[0]::shard[1]]
    todo = [a for a in mine if any((a, t) not in finished for t in TASKS)]
    if limit is not None:
        todo = todo[:limit]
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for arch in tqdm(todo, desc="cells", disable=not progress):
            for task in TASKS:
                if (arch, task) not in finished:
                    writer.writerow(train_cell(arch, task))
                    fh.flush()
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th cell, from the i-th")
    args = ap.parse_args()
    i, n = (int(v) for v in args.shard.split("/"))
    torch.set_num_threads(1)
    print(run(limit=args.limit, shard=(i, n)))
