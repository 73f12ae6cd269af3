"""Architectures: DiffusionNAG (An et al., ICLR 2024), predictor-guided graph diffusion over cells.

As the official code (CownowAn/DiffusionNAG, NAS-Bench-201 tree) does it:

* **What is diffused.** A NAS-Bench-201 cell as DiffusionNAG's 8-node graph: the 8 x 7 operation
  one-hot matrix (:func:`studio.data.nasbench.op_matrix`) scaled to [-1, 1]; the adjacency is
  fixed and only masks the score network's attention.
* **VE-SDE** (``sde_lib.VESDE``): sigma(t) = sigma_min (sigma_max / sigma_min)^t, sigma 0.1 .. 5.0,
  N = 1000, t in [1e-5, 1]. Denoising score matching ``|| sigma s(X_t, sigma) + z ||^2``
  (:func:`dsm_loss`; summed over the matrix, no likelihood weighting).
* **Predictor** (:func:`predictor_loss`): the accuracy regressor is trained on *noised* cells
  ``X_t = X_0 + sigma(t) z`` (MSE), conditioned on a set encoding of the task's data.
* **Guided PC sampler** (:func:`sample`, ``get_pc_conditional_sampler_meta_nas``): from
  X_1 ~ N(0, sigma_max^2), per step a Langevin corrector (SNR 0.16, one step; step size
  2 (snr |z| / |g|)^2) then an Euler-Maruyama predictor, both on the total score
  ``s(X, sigma) + w grad_X f(X, sigma, D)`` (f summed over the batch, ``labels='max'``); the last
  predictor mean is kept, mapped to [0, 1] and thresholded at 0.5 (``utils.quantize``).
* **Validity, uniqueness, novelty** (:func:`vun`, ``analysis/arch_functions.py``): valid = one
  operation per node, input first, output last, no input/output inside; uniqueness = distinct
  valid strings / valid; novelty = distinct strings not in the score network's training set /
  distinct.

The guidance scale ``w`` is in the predictor's units (accuracy as a fraction); the official default
10000 is for its own predictor and is not comparable, so the studio sweeps ``w`` (benchmark).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch

from studio.core.device import MAX_SEED
from studio.core.params import spec
from studio.data import nasbench

SIGMA_MIN, SIGMA_MAX, N_STEPS, EPS, SNR = 0.1, 5.0, 1000, 1e-5, 0.16
MAX_SCALE = 1000.0
DEFAULT_SCALE = 50.0
DEFAULT_STEPS = 200
MAX_CELLS = 1000


def sigma(t: torch.Tensor) -> torch.Tensor:
    return SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def g2(t: torch.Tensor) -> torch.Tensor:
    """Squared diffusion coefficient of the VE-SDE: d sigma^2 / dt."""
    return sigma(t) ** 2 * 2 * math.log(SIGMA_MAX / SIGMA_MIN)


def encode(archs: list[str]) -> torch.Tensor:
    """Cells -> (B, 8, 7) operation matrices in [-1, 1] (through the strings)."""
    return torch.from_numpy(np.stack([nasbench.op_matrix(a) for a in archs])) * 2 - 1


def decode(x: torch.Tensor) -> list[str | None]:
    """(B, 8, 7) samples in [-1, 1] -> cells (None where invalid): (x + 1) / 2 thresholded at 0.5."""
    bits = ((x + 1) / 2 >= 0.5).float().cpu().numpy()
    return [nasbench.from_op_matrix(b) for b in bits]


def noised(x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_t, sigma(t), z) with t ~ U(eps, 1) per cell."""
    t = torch.rand(len(x0), generator=gen) * (1 - EPS) + EPS
    z = torch.randn(x0.shape, generator=gen)
    s = sigma(t)
    return x0 + s[:, None, None] * z, s, z


def dsm_loss(score_net, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x_t, s, z = noised(x0, gen)
    return ((s[:, None, None] * score_net(x_t, s) + z) ** 2).sum((1, 2)).mean()


def predictor_loss(predictor, x0: torch.Tensor, acc: torch.Tensor, task_codes: torch.Tensor,
                   gen: torch.Generator) -> torch.Tensor:
    x_t, s, _ = noised(x0, gen)
    return torch.nn.functional.mse_loss(predictor(x_t, s, task_codes), acc)


# ---------------------------------------------------------------- the task's data, set-encoded

N_PER_CLASS = 20


def task_sets(task: str, gen: torch.Generator | None = None, n: int = N_PER_CLASS) -> torch.Tensor:
    """(n_classes, n, 64): ``n`` training images of each of the task's classes, flattened 8 x 8
    (a fixed draw when ``gen`` is None, as the official sampler's fixed test task)."""
    from studio.train.nasbench import task_data

    x, y = task_data(task, "train")
    gen = gen or torch.Generator().manual_seed(0)
    sets = []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c)[:, 0]
        pick = idx[torch.randint(len(idx), (n,), generator=gen)]
        sets.append(x[pick].flatten(1))
    return torch.stack(sets)


# ---------------------------------------------------------------- sampling


Task = Literal["all ten", "0-4", "5-9", "even/odd"]


@dataclass
class GenerateParams:
    task: Task = field(default="all ten", metadata=spec(
        "Task", "The digit task the cells are for (the predictor reads a sample of its data)."))
    scale: float = field(default=DEFAULT_SCALE, metadata=spec(
        "Guidance scale", "w in s(X) + w grad_X f(X, D); 0 samples the unguided model.", minimum=0.0,
        maximum=MAX_SCALE))
    n_cells: int = field(default=100, metadata=spec("Cells", "How many cells to generate.", minimum=1,
                                                    maximum=MAX_CELLS, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Prior draw and sampler noise.", minimum=0,
                                               maximum=MAX_SEED, step=1))
    steps: int = field(default=DEFAULT_STEPS, metadata=spec(
        "Sampler steps", "Reverse-SDE steps, each a corrector and a predictor step. The official N is 1000; "
        f"{DEFAULT_STEPS} keeps a guided run of 100 cells to seconds on a CPU (validity in the benchmark).",
        minimum=10, maximum=N_STEPS, step=1, advanced=True))


def guided_score(score_net, predictor=None, task_code: torch.Tensor | None = None, scale: float = 0.0
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The total score ``s(X, sigma) + w grad_X sum f(X, sigma, D)`` (``get_classifier_grad_fn``)."""

    def fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            score = score_net(x, s)
        if predictor is None or scale == 0:
            return score
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            grad = torch.autograd.grad(predictor(x_in, s, task_code).sum(), x_in)[0]
        return score + scale * grad

    return fn


def pc_sample(score_fn, n: int, gen: torch.Generator, steps: int = N_STEPS, snr: float = SNR,
              progress: Callable[[int, int], None] | None = None,
              on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The official PC sampler on the VE-SDE: Langevin corrector then Euler-Maruyama predictor per
    step, the last predictor mean returned (B, 8, 7). ``on_step(i, x_mean)`` sees every step."""
    shape = (n, nasbench.N_NODES, len(nasbench.VOCAB))
    x = torch.randn(shape, generator=gen) * SIGMA_MAX
    ts = torch.linspace(1.0, EPS, steps)
    x_mean = x
    for i, t in enumerate(ts):
        vec_t = torch.full((n,), float(t))
        s = sigma(vec_t)
        # corrector (Langevin, alpha = 1 for the VE-SDE)
        grad = score_fn(x, s)
        noise = torch.randn(shape, generator=gen)
        step = 2 * (snr * noise.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()) ** 2
        x = x + step * grad + torch.sqrt(2 * step) * noise
        # predictor (Euler-Maruyama on the reverse SDE, dt = -1 / N)
        grad = score_fn(x, s)
        x_mean = x + g2(vec_t)[:, None, None] * grad / steps
        x = x_mean + torch.sqrt(g2(vec_t) / steps)[:, None, None] * torch.randn(shape, generator=gen)
        if on_step is not None:
            on_step(i, x_mean)
        if progress is not None:
            progress(i + 1, steps)
    return x_mean


@dataclass
class Generated:
    archs: list[str | None]        # one per sample, None where invalid
    predicted: list[float | None]  # the predictor's accuracy for each valid cell (clean, sigma_min)
    params: GenerateParams
    seconds: float


def predict(predictor, archs: list[str], task_code: torch.Tensor) -> np.ndarray:
    """Predicted accuracy of clean cells (the predictor at sigma_min)."""
    if not archs:
        return np.zeros(0)
    with torch.no_grad():
        x = encode(archs)
        return predictor(x, torch.full((len(archs),), SIGMA_MIN), task_code).numpy()


def task_code(predictor, task: str) -> torch.Tensor:
    """The predictor's set encoding of ``task``'s fixed draw of images (what guidance conditions on)."""
    with torch.no_grad():
        return predictor.encode_task(task_sets(task))


def sample_cells(score_net, predictor, code: torch.Tensor | None, scale: float, n: int, seed: int,
                 steps: int = N_STEPS, progress=None) -> list[str | None]:
    """``n`` cells (None where invalid) from the guided PC sampler, seeded."""
    x = pc_sample(guided_score(score_net, predictor, code, scale), n, torch.Generator().manual_seed(seed), steps,
                  progress=progress)
    return decode(x)


def generate(score_net, predictor, p: GenerateParams, progress=None) -> Generated:
    """Generate ``p.n_cells`` cells for ``p.task`` with guidance scale ``p.scale``."""
    t0 = time.perf_counter()
    code = task_code(predictor, p.task)
    archs = sample_cells(score_net, predictor, code, p.scale, p.n_cells, p.seed, p.steps, progress)
    valid = [a for a in archs if a is not None]
    pred = iter(predict(predictor, valid, code).tolist())
    return Generated(archs, [next(pred) if a is not None else None for a in archs], p, time.perf_counter() - t0)


# ---------------------------------------------------------------- metrics


def vun(archs: list[str | None], train_archs: set[str]) -> dict[str, float]:
    """Validity, uniqueness and novelty exactly as the official ``arch_functions`` define them."""
    valid = [a for a in archs if a is not None]
    unique = set(valid)
    return {"validity": len(valid) / max(len(archs), 1),
            "uniqueness": len(unique) / max(len(valid), 1),
            "novelty": len(unique - train_archs) / max(len(unique), 1)}


# ---------------------------------------------------------------- search efficiency


def space_values(task: str, table: dict | None = None) -> dict[str, float]:
    """cell -> validation accuracy for every cell of the space the ground truth covers on ``task``."""
    rows = (table or nasbench.table()).get(task, {})
    return {a: r["val_acc"] for a, r in rows.items()}


def best_so_far(order: list[str], values: dict[str, float]) -> np.ndarray:
    """Best validation accuracy after training the first k distinct cells of ``order`` (k = 1..)."""
    seen, best, out = set(), -np.inf, []
    for arch in order:
        if arch in seen:
            continue
        seen.add(arch)
        best = max(best, values[arch])
        out.append(best)
    return np.array(out)


def trained_to_reach(curve: np.ndarray, target: float) -> float:
    """How many cells were trained before one reached ``target`` (inf when none did)."""
    hit = np.nonzero(curve >= target)[0]
    return float(hit[0] + 1) if len(hit) else float("inf")


def random_search_curves(values: dict[str, float], n_runs: int, length: int, seed: int = 0) -> np.ndarray:
    """(n_runs, length) best-so-far curves of random search (distinct cells, uniformly)."""
    cells = sorted(values)
    acc = np.array([values[a] for a in cells])
    rng = np.random.default_rng(seed)
    return np.stack([np.maximum.accumulate(acc[rng.permutation(len(acc))[:length]]) for _ in range(n_runs)])


def top_fraction(values: dict[str, float], fraction: float = 0.01) -> float:
    """The lowest accuracy ``a`` such that at most ``fraction`` of the space reaches ``a``: the top
    1% strictly (accuracies on 360 validation digits tie often; a plain quantile would let the
    tied cells at the boundary push the "top 1%" to 2%)."""
    acc = np.sort(np.array(list(values.values())))
    levels = np.unique(acc)
    at_least = len(acc) - np.searchsorted(acc, levels, side="left")
    ok = levels[at_least <= fraction * len(acc)]
    return float(ok.min()) if len(ok) else float(levels[-1])


# ---------------------------------------------------------------- the tab's run


@dataclass
class NAGResult:
    generated: Generated
    rows: list[dict]                 # one per distinct valid cell, by predicted accuracy
    vun: dict[str, float]
    parameters: dict
    notes: list[str] = field(default_factory=list)


def run_generate(p: GenerateParams, manager, model: str = "nag-digits", progress=None) -> NAGResult:
    """Validate, generate, and look every valid cell up in the ground truth."""
    from studio.core.params import validate

    validate(p)
    from studio.train.nag import score_split

    with manager.use(model) as m:
        g = generate(m.score, m.predictor, p, progress=progress)
    truth = nasbench.table().get(p.task, {})
    best = {arch: pred for arch, pred in zip(g.archs, g.predicted) if arch is not None}
    counts = Counter(g.archs)
    rows = []
    for arch, pred in sorted(best.items(), key=lambda kv: -kv[1]):
        t = truth.get(arch)
        rows.append({"arch": arch, "predicted_acc": round(pred, 4),
                     "val_acc": None if t is None else round(t["val_acc"], 4),
                     "test_acc": None if t is None else round(t["test_acc"], 4),
                     "params": None if t is None else t["params"], "count": counts[arch]})
    scores = vun(g.archs, set(score_split(m.info.get("score_split_seed", 0))))
    notes = [f"{len(g.archs)} cells in {g.seconds:.1f} s: validity {scores['validity']:.0%}, uniqueness "
             f"{scores['uniqueness']:.0%}, novelty {scores['novelty']:.0%}"]
    missing = sum(r["val_acc"] is None for r in rows)
    if missing:
        notes.append(f"{missing} cell(s) are not in the ground-truth table yet: train one to see its accuracy")
    params = {"method": "DiffusionNAG", "model": model, **{k: getattr(p, k) for k in p.__dataclass_fields__}}
    return NAGResult(g, rows, scores, params, notes)


MAX_ARCH_CHARS = 400


def train_one(arch: str, task: str, progress: Callable[[int, int], None] | None = None) -> dict:
    """Train one typed cell on ``task`` with the ground truth's recipe and compare with the table."""
    from studio.core.params import ParamError
    from studio.train.nasbench import RECIPE, TASKS, train_cell

    if task not in TASKS:
        raise ParamError(f"Task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(arch, str) or len(arch) > MAX_ARCH_CHARS:
        raise ParamError(f"an architecture string is at most {MAX_ARCH_CHARS} characters")
    try:
        arch = nasbench.to_string(nasbench.parse(arch))
    except nasbench.ArchError as exc:
        raise ParamError(f"architecture string: {exc}") from None
    t0 = time.perf_counter()
    row = train_cell(arch, task, progress=progress)
    seconds = time.perf_counter() - t0
    known = nasbench.table().get(task, {}).get(arch)
    lines = [f"**{task}**, {RECIPE['epochs']} epochs in {seconds:.1f} s: validation accuracy **{row['val_acc']:.3f}**, "
             f"test {row['test_acc']:.3f}, {row['params']:,} parameters, {row['flops']:,} multiply-adds."]
    if known is None:
        lines.append("The ground-truth table has no row for this cell's class on this task yet.")
    else:
        same = "this very cell" if known["trained"] == arch else f"`{known['trained']}` (same function)"
        seeds = "one training seed" if known["seeds"] == 1 else f"mean of {known['seeds']} training seeds"
        lines.append(f"The table ({same}, {seeds}): validation {known['val_acc']:.3f}, test {known['test_acc']:.3f}. "
                     f"This run used seed {RECIPE['seed']}. Differences of a few points are training noise: the "
                     "table's two seeds differ by 3-5 points on average, the same seed on another machine by about 1.")
    return {"row": row, "table": known, "seconds": seconds, "message": "\n\n".join(lines)}
