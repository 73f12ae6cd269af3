"""Ground truth for the Architectures tab: every NAS-Bench-201 cell trained on digit tasks.

One cell per functional class (:func:`studio.data.nasbench.canonical`: 5,773 classes of the
15,625 cells; the others map onto their class) is trained with one fixed recipe on each task and
its validation and test accuracy, parameters and multiply-accumulates recorded:

* tasks (:data:`studio.data.nasbench.TASKS`): all ten digits; digits 0-4; digits 5-9; even vs odd;
* data (:func:`studio.data.nasbench.task_data`): scikit-learn digits at their native 8 x 8 (the
  studio's 16 x 16 images average-pooled); the studio's 1,437 training digits split 1,077 / 360
  (train / validation, stratified, seed 0), the 360 test digits for test accuracy;
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
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from studio.core.sampling import Progress
from studio.data import nasbench
from studio.train.common import optimizer_step
from studio.threads import building

TASKS = nasbench.TASKS
RECIPE = {"channels": 8, "lr": 5e-3, "batch": 32, "epochs": 8, "seed": 0}
FIELDS = nasbench.FIELDS
ORDER_SEED = 201


def train_group(archs: list[str], task: str, recipe: dict = RECIPE, device: str = "cpu", seed: int | None = None,
                matmul: bool | None = None, stop: Callable[[], bool] = lambda: False
                ) -> Iterator[Progress | list[dict]]:
    """Train cells of ``archs`` on ``task`` together (:class:`~studio.nets.nas_cell.CellNets`), one
    fixed recipe: yields a Progress per optimizer step (``info``: ``loss``, the sum over the cells
    of each cell's mean loss; ``epoch``, 1-based; ``epochs``), then one table row per cell (a list).
    ``stop()`` is polled between steps; when it answers True the training ends there and the rows
    measure the networks as trained so far. ``matmul`` (default: on any device but the CPU) runs
    the convolutions as batched matmuls.

    Every network starts from the same seeded draw and sees the same batches in the same order, so
    a cell's figures do not depend on which cells share its batch (up to floating-point order).
    """
    from studio.nets.nas_cell import CellNets

    seed = recipe["seed"] if seed is None else seed
    k = nasbench.n_classes(task)
    matmul = device != "cpu" if matmul is None else matmul
    with building():  # a tab trains cells while others load models (studio.threads)
        nets = CellNets(archs, n_classes=k, c=recipe["channels"], seed=seed, matmul=matmul).to(device)
    g = len(archs)
    opt = torch.optim.Adam(nets.parameters(), lr=recipe["lr"])
    x, y = (t.to(device) for t in nasbench.task_data(task, "train"))
    gen = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // recipe["batch"])
    step, total = 0, recipe["epochs"] * per_epoch
    nets.train()
    for epoch in range(recipe["epochs"]):
        perm = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), recipe["batch"]):
            if stop():
                yield _rows(nets, archs, task, seed, recipe, device)
                return
            idx = perm[i:i + recipe["batch"]]
            logits = nets(x[idx, None].expand(len(idx), g, *x.shape[1:]))
            # the sum over networks of each network's mean loss: each gets its own gradient
            loss = F.cross_entropy(logits.reshape(-1, k), y[idx].repeat_interleave(g), reduction="sum") / len(idx)
            value = optimizer_step(loss, opt, clip=None)
            step += 1
            yield Progress(step, total, info={"loss": value, "epoch": epoch + 1, "epochs": recipe["epochs"]})
    yield _rows(nets, archs, task, seed, recipe, device)


@torch.no_grad()
def _rows(nets, archs: list[str], task: str, seed: int, recipe: dict, device: str) -> list[dict]:
    """One table row per cell of ``nets``: validation and test accuracy, parameters, multiply-adds."""
    from studio.nets.nas_cell import CellNet, count_params, flops

    k, c, g = nasbench.n_classes(task), recipe["channels"], len(archs)
    nets.eval()
    acc = {}
    for split in ("val", "test"):
        xs, ys = (t.to(device) for t in nasbench.task_data(task, split))
        pred = nets(xs[:, None].expand(len(xs), g, *xs.shape[1:])).argmax(-1)
        acc[split] = (pred == ys[:, None]).float().mean(0).cpu().tolist()
    return [{"arch": a, "task": task, "seed": seed, "val_acc": round(acc["val"][n], 4),
             "test_acc": round(acc["test"][n], 4), "params": count_params(CellNet(a, n_classes=k, c=c)),
             "flops": flops(a, c, k)} for n, a in enumerate(archs)]


def train_many(archs: list[str], task: str, recipe: dict = RECIPE, device: str = "cpu", seed: int | None = None,
               matmul: bool | None = None) -> list[dict]:
    """:func:`train_group` to the end: one table row per cell of ``archs``."""
    *_, rows = train_group(archs, task, recipe, device, seed, matmul)
    return rows


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
    a uniform sample) splits the work between processes or machines.

    Under ``accelerate launch`` (several processes) process i trains every n-th group of cells (from the i-th) into
    its own CSV, ``<path stem>.rank<i>.csv``, on its own device; :func:`ship` merges them. The cells are independent
    networks, so there is nothing to average between processes: this is the split, not data parallelism."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from studio.train.common import RUNS_DIR

    path = path or RUNS_DIR / "nasbench-digits.csv"
    state = PartialState()
    share = slice(state.process_index, None, state.num_processes)
    if state.num_processes > 1:
        path = path.with_name(f"{path.stem}.rank{state.process_index}{path.suffix}")
        device = str(state.device) if device == "cpu" else device
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = done(path)
    order = visit_order()[part][:limit]
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for seed in seeds:
            chunks = [order[i:i + group] for i in range(0, len(order), group)][share]
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
