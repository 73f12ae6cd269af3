"""Ground truth for the Architectures tab: every NAS-Bench-201 cell trained on digit tasks.

One cell per functional class (:func:`studio.data.nasbench.canonical`: 5,773 classes of the
15,625 cells; the others map onto their class) is trained with one fixed recipe on each task and
its validation and test accuracy, parameters and multiply-accumulates recorded:

* tasks (:data:`TASKS`): all ten digits; digits 0-4; digits 5-9; even vs odd;
* data: scikit-learn digits at their native 8 x 8 (the studio's 16 x 16 images average-pooled);
  the studio's 1,437 training digits split 1,077 / 360 (train / validation, stratified, seed 0),
  the 360 test digits for test accuracy;
* recipe: :class:`studio.nets.nas_cell.CellNet` with C = 8, Adam lr 5e-3, batch 32, 8 epochs,
  the same seeds for every cell (so a cell's figures are reproducible); the shipped table holds
  seeds 0 and 1 (``--seeds 0,1``) and :func:`studio.data.nasbench.table` averages them.

Cells are trained many at once (:class:`studio.nets.nas_cell.CellNets`, ``--group``; on a GPU
with ``--device cuda``): every network starts from the same seeded draw and sees the same
batches, so a cell gets the same figures alone or in a group. Cells are visited in a fixed random
order, every task of a group before the next group, so a partial table is a uniform sample of the
space. Rows are appended to a CSV (``--out``, default ``runs/nasbench-digits.csv``) and a
restarted run skips what is done; ``--tasks`` splits the work between processes; ``--ship A.csv
B.csv`` merges run CSVs into the shipped table ``studio/data/nasbench_digits.csv.gz``:
``python -m studio.train.nasbench [--tasks ...] [--out ...] [--seeds 0,1] [--limit N] [--part 0:1000]``.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio.data import nasbench

TASKS = {"all ten": tuple(range(10)), "0-4": (0, 1, 2, 3, 4), "5-9": (5, 6, 7, 8, 9), "even/odd": tuple(range(10))}
RECIPE = {"channels": 8, "lr": 5e-3, "batch": 32, "epochs": 8, "seed": 0, "val_size": 360}
FIELDS = nasbench.FIELDS
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


def train_many(archs: list[str], task: str, recipe: dict = RECIPE, device: str = "cpu", seed: int | None = None,
               progress=None, matmul: bool | None = None) -> list[dict]:
    """Train cells of ``archs`` on ``task`` together (:class:`~studio.nets.nas_cell.CellNets`), one
    fixed recipe; returns one table row per cell. ``progress(epoch, epochs)`` is called per epoch.
    ``matmul`` (default: on any device but the CPU) runs the convolutions as batched matmuls.

    Every network starts from the same seeded draw and sees the same batches in the same order, so
    a cell's figures do not depend on which cells share its batch (up to floating-point order).
    """
    from studio.nets.nas_cell import CellNet, CellNets, count_params, flops

    seed = recipe["seed"] if seed is None else seed
    k, c = n_classes(task), recipe["channels"]
    matmul = device != "cpu" if matmul is None else matmul
    nets = CellNets(archs, n_classes=k, c=c, seed=seed, matmul=matmul).to(device)
    g = len(archs)
    opt = torch.optim.Adam(nets.parameters(), lr=recipe["lr"])
    x, y = (t.to(device) for t in task_data(task, "train"))
    gen = torch.Generator().manual_seed(seed)
    nets.train()
    for epoch in range(recipe["epochs"]):
        perm = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), recipe["batch"]):
            idx = perm[i:i + recipe["batch"]]
            logits = nets(x[idx, None].expand(len(idx), g, *x.shape[1:]))
            # the sum over networks of each network's mean loss: each gets its own gradient
            loss = F.cross_entropy(logits.reshape(-1, k), y[idx].repeat_interleave(g), reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, recipe["epochs"])
    nets.eval()
    acc = {}
    with torch.no_grad():
        for split in ("val", "test"):
            xs, ys = (t.to(device) for t in task_data(split=split, task=task))
            pred = nets(xs[:, None].expand(len(xs), g, *xs.shape[1:])).argmax(-1)
            acc[split] = (pred == ys[:, None]).float().mean(0).cpu().tolist()
    return [{"arch": a, "task": task, "seed": seed, "val_acc": round(acc["val"][n], 4),
             "test_acc": round(acc["test"][n], 4), "params": count_params(CellNet(a, n_classes=k, c=c)),
             "flops": flops(a, c, k)} for n, a in enumerate(archs)]


def train_cell(arch: str, task: str, recipe: dict = RECIPE, progress=None) -> dict:
    """Train one cell on one task with the table's recipe (on the CPU); returns its row."""
    return train_many([nasbench.to_string(nasbench.parse(arch))], task, recipe, progress=progress)[0]


def visit_order() -> list[str]:
    """The classes' representatives (first cell of each class) in a fixed random order."""
    reps = [cells[0] for cells in nasbench.unique_classes().values()]
    rng = np.random.default_rng(ORDER_SEED)
    return [reps[i] for i in rng.permutation(len(reps))]


def done(path: Path) -> set[tuple[str, str, int]]:
    if not path.exists():
        return set()
    with path.open() as fh:
        return {(row["arch"], row["task"], int(row["seed"])) for row in csv.DictReader(fh)}


def run(path: Path | None = None, seeds=(0,), group: int = 64, device: str = "cpu", limit: int | None = None,
        progress: bool = True, tasks=tuple(TASKS), part: slice = slice(None)) -> Path:
    """Train what is missing (up to ``limit`` cells per seed), ``group`` cells at a time, appending
    rows to ``path``. Cells go in :func:`visit_order`, every task of a group before the next group,
    so a partial table is a uniform sample of the space. ``part`` (a slice of the visit order, itself
    a uniform sample) splits the work between processes or machines."""
    from tqdm.auto import tqdm

    from studio.train.common import RUNS_DIR

    path = path or RUNS_DIR / "nasbench-digits.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = done(path)
    order = visit_order()[part][:limit]
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for seed in seeds:
            chunks = [order[i:i + group] for i in range(0, len(order), group)]
            for chunk in tqdm(chunks, desc=f"seed {seed}: groups of {group} cells", disable=not progress):
                for task in tasks:
                    todo = [a for a in chunk if (a, task, seed) not in finished]
                    if todo:
                        writer.writerows(train_many(todo, task, device=device, seed=seed))
                        fh.flush()
    return path


def ship(sources: list[Path], target: Path | None = None) -> Path:
    """Merge run CSVs into the shipped table (gzip CSV, rows sorted, duplicates dropped)."""
    rows = {}
    for src in sources:
        with Path(src).open() as fh:
            for row in csv.DictReader(fh):
                rows[(row["task"], row["arch"], int(row["seed"]))] = row
    return nasbench.write_table((rows[k] for k in sorted(rows)), target or nasbench.TABLE)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None, help="the CSV (default runs/nasbench-digits.csv)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--group", type=int, default=64, help="cells trained at once")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="only the first N cells of the visit order")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    ap.add_argument("--part", default=":", help="a slice START:STOP of the visit order (to split the work)")
    ap.add_argument("--ship", nargs="+", type=Path, default=None, metavar="CSV",
                    help="merge these run CSVs into the shipped table (studio/data/nasbench_digits.csv.gz) and stop")
    args = ap.parse_args()
    if args.ship:
        raise SystemExit(print(ship(args.ship)))
    if args.device == "cpu":
        torch.set_num_threads(1)
    print(run(args.out, tuple(int(s) for s in args.seeds.split(",")), args.group, args.device, args.limit,
              tasks=tuple(args.tasks.split(",")), part=slice(*(int(v) if v else None for v in args.part.split(":")))))
