"""The NAS-Bench-201 cell search space, as architecture strings, operation matrices and classes.

A cell is a DAG over 4 nodes; each of its 6 edges (i -> j, i < j) carries one of five operations.
NAS-Bench-201 writes a cell as a string, node by node, each incoming edge as ``op~source``:
``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|``; 5^6 = 15,625
cells. Everything here converts **through the string** (:func:`parse`, :func:`to_string`), never
through raw operation indices, because libraries order the operations differently.

DiffusionNAG's graph view (official ``datasets_nas.py``): an 8-node DAG with the operations on
the nodes (input, the 6 edge operations, output) and a fixed adjacency; the operation one-hot
matrix (8 x 7 over input, output and the 5 operations) is what is diffused (:func:`op_matrix`,
:func:`from_op_matrix`, :func:`is_valid`, with the official validity rule; :func:`encode` and
:func:`decode` for batches in [-1, 1]); the score network trains on a fixed half of the space
(:func:`score_split`).

Functionally equal cells (a ``none`` edge removes a path, a node that cannot reach the output
does nothing, sums commute) share a :func:`canonical` key; the digits benchmark trains one cell
per key and maps the rest onto it.

The digit tasks (:data:`TASKS`, :func:`task_data`, :func:`task_sets`: the images the accuracy
predictor reads) and the ground-truth table (:func:`table`, :func:`space_values`,
:func:`top_fraction`) live here too; :mod:`studio.train.nasbench` made the table.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from studio.errors import UserError

if TYPE_CHECKING:
    import torch

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")  # NAS-Bench-201's names
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), in the string's order
# DiffusionNAG's operation vocabulary (rows of the one-hot matrix) and fixed 8-node adjacency
VOCAB = ("input", "output") + OPS
ADJACENCY = ((0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (2, 6), (3, 7), (4, 6), (5, 7), (6, 7))
N_NODES = 8


class ArchError(UserError):
    """A malformed architecture string or matrix; the message says what is wrong."""


def parse(arch: str) -> tuple[str, ...]:
    """An architecture string -> its 6 operations in :data:`EDGES` order (checked strictly)."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchError("an architecture string is empty")
    nodes = arch.strip().split("+")
    if len(nodes) != 3:
        raise ArchError(f"a NAS-Bench-201 cell has 3 node groups separated by '+', got {len(nodes)}")
    ops = []
    for j, group in enumerate(nodes, start=1):
        if not (group.startswith("|") and group.endswith("|")):
            raise ArchError(f"node group {j} must start and end with '|': {group!r}")
        parts = group[1:-1].split("|")
        if len(parts) != j:
            raise ArchError(f"node {j} takes {j} incoming edge(s), got {len(parts)} in {group!r}")
        for i, part in enumerate(parts):
            op, sep, src = part.partition("~")
            if not sep or src != str(i):
                raise ArchError(f"edge {part!r} of node {j} must read 'op~{i}'")
            if op not in OPS:
                raise ArchError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}")
            ops.append(op)
    return tuple(ops)


def to_string(ops) -> str:
    ops = tuple(ops)
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise ArchError(f"a cell is 6 operations from {', '.join(OPS)}, got {ops!r}")
    groups, k = [], 0
    for j in (1, 2, 3):
        groups.append("|" + "|".join(f"{ops[k + i]}~{i}" for i in range(j)) + "|")
        k += j
    return "+".join(groups)


@lru_cache(maxsize=1)
def all_archs() -> tuple[str, ...]:
    """Every cell of the space (15,625), as strings."""
    return tuple(to_string(ops) for ops in itertools.product(OPS, repeat=len(EDGES)))


def canonical(arch: str) -> str:
    """A key shared by functionally equal cells: the output node's expression with ``none``
    paths and dead nodes removed, identity skips folded and sums sorted ("zero" for a cell whose
    output is always zero)."""
    ops = parse(arch)
    expr = {0: "x"}
    for j in (1, 2, 3):
        terms = []
        for (to, src), op in zip(EDGES, ops):
            if to != j or op == "none" or expr[src] is None:
                continue
            terms.append(expr[src] if op == "skip_connect" else f"{op}({expr[src]})")
        expr[j] = "+".join(sorted(terms)) if terms else None
        if expr[j] is not None and len(terms) > 1:
            expr[j] = f"[{expr[j]}]"
    return expr[3] or "zero"


def op_matrix(arch: str) -> np.ndarray:
    """DiffusionNAG's one-hot operation matrix (8 nodes x 7 vocabulary) of a cell, in {0, 1}."""
    ops = parse(arch)
    x = np.zeros((N_NODES, len(VOCAB)), np.float32)
    x[0, VOCAB.index("input")] = 1
    x[N_NODES - 1, VOCAB.index("output")] = 1
    for k, op in enumerate(ops):
        x[1 + k, VOCAB.index(op)] = 1
    return x


def adjacency() -> np.ndarray:
    a = np.zeros((N_NODES, N_NODES), np.float32)
    for i, j in ADJACENCY:
        a[i, j] = 1
    return a


def is_valid(x: np.ndarray) -> bool:
    """The official rule on a (thresholded) one-hot matrix: one operation per node, node 0 the
    input, node 7 the output, no input or output among the intermediate nodes."""
    x = np.asarray(x)
    if x.shape != (N_NODES, len(VOCAB)) or not np.all(x.sum(1) == 1):
        return False
    ops = [VOCAB[i] for i in x.argmax(1)]
    return ops[0] == "input" and ops[-1] == "output" and all(op in OPS for op in ops[1:-1])


def from_op_matrix(x: np.ndarray) -> str | None:
    """The cell of a valid one-hot matrix (None when invalid)."""
    if not is_valid(x):
        return None
    return to_string(VOCAB[i] for i in np.asarray(x)[1:-1].argmax(1))


def encode(archs: list[str]) -> torch.Tensor:
    """Cells -> (B, 8, 7) operation matrices in [-1, 1] (through the strings): what DiffusionNAG diffuses."""
    import torch

    return torch.from_numpy(np.stack([op_matrix(a) for a in archs])) * 2 - 1


def decode(x: torch.Tensor) -> list[str | None]:
    """(B, 8, 7) samples in [-1, 1] -> cells (None where invalid): (x + 1) / 2 thresholded at 0.5
    (the official ``utils.quantize``)."""
    bits = ((x + 1) / 2 >= 0.5).float().cpu().numpy()
    return [from_op_matrix(b) for b in bits]


def unique_classes() -> dict[str, list[str]]:
    """Canonical key -> every cell with that key (the first is the one the benchmark trains)."""
    classes: dict[str, list[str]] = {}
    for arch in all_archs():
        classes.setdefault(canonical(arch), []).append(arch)
    return classes


def score_split(seed: int = 0) -> list[str]:
    """DiffusionNAG's score network's training cells: a fixed random half of the space (novelty is
    measured against it)."""
    archs = all_archs()
    rng = np.random.default_rng(seed)
    return sorted(archs[i] for i in rng.permutation(len(archs))[:len(archs) // 2])


# ---------------------------------------------------------------- the digit tasks

# task -> the digits it uses (even/odd: two classes over all ten digits)
TASKS = {"all ten": tuple(range(10)), "0-4": (0, 1, 2, 3, 4), "5-9": (5, 6, 7, 8, 9), "even/odd": tuple(range(10))}
VAL_SIZE = 360    # validation digits split off the studio's 1,437 training digits (stratified, seed 0)
N_PER_CLASS = 20  # images per class in a task's set (what the accuracy predictor reads)


def task_data(task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8), targets (N,)) of ``task`` on ``split`` ('train', 'val' or 'test')."""
    import torch

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
    """scikit-learn digits at their native 8 x 8 (the studio's 16 x 16 images average-pooled), split
    1,077 / 360 / 360 (train / validation / test)."""
    import torch
    import torch.nn.functional as F
    from sklearn.model_selection import train_test_split

    from studio.data import digits

    def small(images):
        return F.avg_pool2d(torch.from_numpy(images), 2).numpy()

    if split == "test":
        test = digits.load("test")
        return small(test.images), test.labels
    train = digits.load("train")
    idx_train, idx_val = train_test_split(np.arange(len(train.labels)), test_size=VAL_SIZE,
                                          random_state=0, stratify=train.labels)
    idx = idx_train if split == "train" else idx_val
    return small(train.images[idx]), train.labels[idx]


def task_sets(task: str, gen: torch.Generator | None = None, n: int = N_PER_CLASS) -> torch.Tensor:
    """(n_classes, n, 64): ``n`` training images of each of the task's classes, flattened 8 x 8
    (a fixed draw when ``gen`` is None, as the official sampler's fixed test task)."""
    import torch

    x, y = task_data(task, "train")
    gen = gen or torch.Generator().manual_seed(0)
    sets = []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c)[:, 0]
        pick = idx[torch.randint(len(idx), (n,), generator=gen)]
        sets.append(x[pick].flatten(1))
    return torch.stack(sets)


# ---------------------------------------------------------------- the ground truth

TABLE = Path(__file__).with_name("nasbench_digits.csv.gz")  # made by studio.train.nasbench (--ship)


def read_rows(path: str | Path | None = None):
    """A table file's raw rows (dicts of strings with :data:`FIELDS`), one per cell, task and seed."""
    import csv
    import gzip

    with gzip.open(path or TABLE, "rt", newline="") as fh:
        yield from csv.DictReader(fh)


@lru_cache(maxsize=4)
def table(path: str | None = None) -> dict[str, dict[str, dict]]:
    """A ground-truth table: task -> cell -> {val_acc, test_acc, params, flops, trained, seeds}.

    The shipped file holds one trained cell per functional class (several rows of a cell: their
    mean over seeds); every other cell of the class gets the same figures (``trained`` names the
    cell that was trained). A file with a row for every cell (:func:`from_nats`) keeps each
    cell's own row. A cell whose class has no row for a task is absent from that task.
    """
    rows: dict[tuple[str, str], list[dict]] = {}
    for row in read_rows(path):
        rows.setdefault((row["task"], to_string(parse(row["arch"]))), []).append(row)

    def entry(group):
        return {"val_acc": float(np.mean([float(r["val_acc"]) for r in group])),
                "test_acc": float(np.mean([float(r["test_acc"]) for r in group])),
                "params": int(float(group[0]["params"])), "flops": int(float(group[0]["flops"])),
                "trained": group[0]["arch"], "seeds": len(group)}

    by_class: dict[tuple[str, str], dict] = {}
    for (task, arch), group in rows.items():
        by_class.setdefault((task, canonical(arch)), entry(group))
    classes = unique_classes()
    out: dict[str, dict[str, dict]] = {}
    for (task, key), e in by_class.items():
        for arch in classes[key]:
            out.setdefault(task, {})[arch] = entry(rows[(task, arch)]) if (task, arch) in rows else e
    return out


def space_values(task: str, truth: dict | None = None) -> dict[str, float]:
    """cell -> validation accuracy for every cell of the space the ground truth (``truth``, a
    :func:`table`; default the shipped one) covers on ``task``."""
    rows = (truth or table()).get(task, {})
    return {a: r["val_acc"] for a, r in rows.items()}


def top_fraction(values: dict[str, float], fraction: float = 0.01) -> float:
    """The lowest accuracy ``a`` such that at most ``fraction`` of the space reaches ``a``: the top
    1% strictly (accuracies on 360 validation digits tie often; a plain quantile would let the
    tied cells at the boundary push the "top 1%" to 2%)."""
    acc = np.sort(np.array(list(values.values())))
    levels = np.unique(acc)
    at_least = len(acc) - np.searchsorted(acc, levels, side="left")
    ok = levels[at_least <= fraction * len(acc)]
    return float(ok.min()) if len(ok) else float(levels[-1])


FIELDS = ("arch", "task", "seed", "val_acc", "test_acc", "params", "flops")  # a table's columns


def write_table(rows, target: Path) -> Path:
    """Write table rows (dicts with :data:`FIELDS`) as a gzip CSV, byte-reproducible (no timestamp)."""
    import csv
    import gzip
    import io

    with gzip.GzipFile(target, "wb", mtime=0) as raw, io.TextIOWrapper(raw, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return target


def from_nats(api, datasets=("cifar10-valid", "cifar100", "ImageNet16-120"), target: Path | None = None,
              hp: str = "200") -> Path:
    """Convert NAS-Bench-201 / NATS-Bench (topology) figures into the studio's table format.

    ``api`` is the user's own ``nats_bench.create(path, "tss", fast_mode=True)`` (or NAS-Bench-201's
    ``API``): the studio neither ships nor downloads those files. Each cell's string goes through
    :func:`parse` (never raw indices); accuracies (percent there) become fractions; the mean over the
    benchmark's seeds is read (``is_random=False``). Load the result with ``table(str(target))``.
    """
    def rows():
        for index in range(len(api)):
            arch = to_string(parse(api.arch(index)))
            for dataset in datasets:
                info = api.get_more_info(index, dataset, hp=hp, is_random=False)
                cost = api.get_cost_info(index, dataset)
                val = info.get("valid-accuracy", info.get("valtest-accuracy", info["test-accuracy"]))
                yield {"arch": arch, "task": dataset, "seed": 0, "val_acc": val / 100,
                       "test_acc": info["test-accuracy"] / 100, "params": round(cost["params"] * 1e6),
                       "flops": round(cost["flops"] * 1e6)}

    return write_table(rows(), Path(target or "nasbench201-real.csv.gz"))
