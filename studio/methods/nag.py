"""Architectures: DiffusionNAG (An et al., ICLR 2024), predictor-guided graph diffusion over cells.

As the official code (CownowAn/DiffusionNAG, NAS-Bench-201 tree) does it:

* **What is diffused.** A NAS-Bench-201 cell as DiffusionNAG's 8-node graph: the 8 x 7 operation
  one-hot matrix (:func:`studio.data.nasbench.op_matrix`) scaled to [-1, 1]
  (:func:`studio.data.nasbench.encode`); the adjacency is fixed and only masks the score
  network's attention.
* **VE-SDE** (``sde_lib.VESDE``, :mod:`studio.nets.ve_sde`): sigma(t) = sigma_min (sigma_max /
  sigma_min)^t, sigma 0.1 .. 5.0, N = 1000, t in [1e-5, 1]. Denoising score matching and the
  predictor's loss on noised cells: :mod:`studio.train.nag`.
* **Guided PC sampler** (:func:`pc_sample`, ``get_pc_conditional_sampler_meta_nas``): from
  X_1 ~ N(0, sigma_max^2), per step a Langevin corrector (SNR 0.16, one step; step size
  2 (snr |z| / |g|)^2) then an Euler-Maruyama predictor, both on the total score
  ``s(X, sigma) + w grad_X f(X, sigma, D)`` (f summed over the batch, ``labels='max'``); the last
  predictor mean is kept, mapped to [0, 1] and thresholded at 0.5 (``utils.quantize``,
  :func:`studio.data.nasbench.decode`).
* **The predictor** f (:class:`studio.nets.nag.AccuracyPredictor`): a deviation. The official
  NAS-Bench-201 predictor is a directed-GCN meta-predictor (``MetaNeuralPredictor``,
  ``models/digcn_meta.py``: 4 directed graph-convolution layers, hidden 144); the studio's reads
  the cell with the score network's transformer encoder, as the official ``MetaPredictorCATE``
  (the MobileNetV3 tree's predictor) does. The task encoder, head and noised-cell training match.
* **Validity, uniqueness, novelty** (:func:`studio.core.nas_metrics.vun`,
  ``analysis/arch_functions.py``) of what :func:`run` generates, novelty against the score
  network's training half (:func:`studio.data.nasbench.score_split`).

The guidance scale ``w`` is in the predictor's units (accuracy as a fraction); the official default
10000 is for its own predictor and is not comparable. The benchmark chooses ``w`` per task on
selection seeds and reports on other seeds (``benchmarks/results/nag.md``); :data:`TASK_SCALE` holds
those choices, and the tab's scale follows the task (:data:`DEFAULT_SCALE` is all ten's).

:func:`run` generates (a :class:`PCStep` per sampler step, then a :class:`NAGResult`);
:func:`train_cell` trains one cell with the ground truth's recipe (a Progress per optimizer
step, then a :class:`TrainResult`), stoppable between steps.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from studio import lazy
from studio.core.device import MAX_SEED
from studio.core.nas_metrics import vun
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress
from studio.core.sampling import relay as _relay
from studio.data import nasbench
from studio.methods import method
from studio.nets.ve_sde import EPS, N_STEPS, SIGMA_MAX, SIGMA_MIN, g2, sigma

torch = lazy.load("torch")

SNR = 0.16  # the Langevin corrector's signal-to-noise ratio (official)
MAX_SCALE = 1000.0
# The scale bench_nag.py chose per task from (10, 30, 100, 300) on selection seeds 0 and 1 (2026-11-30)
TASK_SCALE = {"all ten": 10.0, "0-4": 10.0, "5-9": 30.0, "even/odd": 300.0}
DEFAULT_SCALE = TASK_SCALE["all ten"]
DEFAULT_STEPS = 200
MAX_CELLS = 1000
MAX_ARCH_CHARS = 400
MODEL = "nag-digits"
EXAMPLE = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"

Task = Literal["all ten", "0-4", "5-9", "even/odd"]


@dataclass
class Params:
    model: str = field(default=MODEL, metadata=spec(
        "Model", "A DiffusionNAG model: the score network and the accuracy predictor."))
    task: Task = field(default="all ten", metadata=spec(
        "Task", "The digit task the cells are for (the predictor reads a sample of its data)."))
    scale: float = field(default=DEFAULT_SCALE, metadata=spec(
        "Guidance scale", "w in s(X) + w grad_X f(X, D); 0 samples the unguided model. Set to the benchmark's choice "
        "for the task when the task changes.", minimum=0.0,
        maximum=MAX_SCALE))
    n_cells: int = field(default=100, metadata=spec("Cells", "How many cells to generate.", minimum=1,
                                                    maximum=MAX_CELLS, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Prior draw and sampler noise.", minimum=0,
                                               maximum=MAX_SEED, step=1))
    steps: int = field(default=DEFAULT_STEPS, metadata=spec(
        "Sampler steps", "Reverse-SDE steps, each a corrector and a predictor step. The official N is 1000; "
        f"{DEFAULT_STEPS} keeps a guided run of 100 cells to seconds on a CPU (validity in the benchmark).",
        minimum=10, maximum=N_STEPS, step=1, advanced=True))


# ---------------------------------------------------------------- sampling


@dataclass
class PCStep(Progress):
    """One step of :func:`pc_sample`: ``timestep`` is t, ``x_mean`` the predictor's mean after the step."""
    x_mean: torch.Tensor | None = None  # (B, 8, 7), the matrix scale [-1, 1]


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


def pc_sample(score_fn, n: int, gen: torch.Generator, steps: int = N_STEPS, snr: float = SNR
              ) -> Iterator[PCStep | torch.Tensor]:
    """The official PC sampler on the VE-SDE: Langevin corrector then Euler-Maruyama predictor per
    step. Yields a :class:`PCStep` per step, then the last predictor mean (B, 8, 7); use it as
    ``*steps, x = pc_sample(...)``."""
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
        yield PCStep(i + 1, steps, timestep=float(t), x_mean=x_mean)
    yield x_mean


@dataclass
class Generated:
    archs: list[str | None]        # one per sample, None where invalid
    predicted: list[float | None]  # the predictor's accuracy for each valid cell (clean, sigma_min)
    params: Params
    seconds: float


def predict(predictor, archs: list[str], task_code: torch.Tensor) -> np.ndarray:
    """Predicted accuracy of clean cells (the predictor at sigma_min)."""
    if not archs:
        return np.zeros(0)
    with torch.no_grad():
        x = nasbench.encode(archs)
        return predictor(x, torch.full((len(archs),), SIGMA_MIN), task_code).numpy()


def task_code(predictor, task: str) -> torch.Tensor:
    """The predictor's set encoding of ``task``'s fixed draw of images (what guidance conditions on)."""
    with torch.no_grad():
        return predictor.encode_task(nasbench.task_sets(task))


def sample_cells(score_net, predictor, code: torch.Tensor | None, scale: float, n: int, seed: int,
                 steps: int = N_STEPS) -> Iterator[PCStep | list[str | None]]:
    """The guided PC sampler, seeded: yields its :class:`PCStep` s, then ``n`` cells (None where invalid)."""
    x = yield from _relay(pc_sample(guided_score(score_net, predictor, code, scale), n,
                                    torch.Generator().manual_seed(seed), steps))
    yield nasbench.decode(x)


def generate(score_net, predictor, p: Params) -> Iterator[PCStep | Generated]:
    """Generate ``p.n_cells`` cells for ``p.task`` with guidance scale ``p.scale``: yields the
    sampler's :class:`PCStep` s, then the :class:`Generated` cells with their predicted accuracy."""
    t0 = time.perf_counter()
    code = task_code(predictor, p.task)
    archs = yield from _relay(sample_cells(score_net, predictor, code, p.scale, p.n_cells, p.seed, p.steps))
    valid = [a for a in archs if a is not None]
    pred = iter(predict(predictor, valid, code).tolist())
    yield Generated(archs, [next(pred) if a is not None else None for a in archs], p, time.perf_counter() - t0)


# ---------------------------------------------------------------- the tab's run


@dataclass
class NAGResult:
    generated: Generated
    rows: list[dict]                 # one per distinct valid cell, by predicted accuracy
    vun: dict[str, float]
    parameters: dict
    notes: list[str] = field(default_factory=list)


def check(p: Params, manager) -> None:
    """Raise :class:`ParamError` for anything the run cannot do."""
    validate(p)
    models = method("nag").models(manager)
    if not models:
        raise ParamError(f"no DiffusionNAG model is registered; build one with `studio train {MODEL}`")
    if p.model not in models:
        raise ParamError(f"unknown model {p.model!r}; choose one of {', '.join(models)}")


def truth_rows(g: Generated, truth: dict[str, dict]) -> list[dict]:
    """One row per distinct valid cell, by predicted accuracy, with the ground truth's figures
    (None where ``truth``, one task of :func:`studio.data.nasbench.table`, has no row)."""
    best = {arch: pred for arch, pred in zip(g.archs, g.predicted) if arch is not None}
    counts = Counter(g.archs)
    rows = []
    for arch, pred in sorted(best.items(), key=lambda kv: -kv[1]):
        t = truth.get(arch)
        rows.append({"arch": arch, "predicted_acc": round(pred, 4),
                     "val_acc": None if t is None else round(t["val_acc"], 4),
                     "test_acc": None if t is None else round(t["test_acc"], 4),
                     "params": None if t is None else t["params"], "count": counts[arch]})
    return rows


def run(p: Params, manager) -> Iterator[PCStep | NAGResult]:
    """Validate, generate with the leased model (a :class:`PCStep` per sampler step), then yield a
    :class:`NAGResult`: every valid cell looked up in the ground truth, and the run's V/U/N."""
    check(p, manager)
    with manager.use(p.model) as m:
        g = yield from _relay(generate(m.score, m.predictor, p))
        split_seed = m.info.get("score_split_seed", 0)
    rows = truth_rows(g, nasbench.table().get(p.task, {}))
    scores = vun(g.archs, set(nasbench.score_split(split_seed)))
    notes = [f"{len(g.archs)} cells in {g.seconds:.1f} s: validity {scores['validity']:.0%}, uniqueness "
             f"{scores['uniqueness']:.0%}, novelty {scores['novelty']:.0%}"]
    missing = sum(r["val_acc"] is None for r in rows)
    if missing:
        notes.append(f"{missing} cell(s) are not in the ground-truth table yet: train one to see its accuracy")
    yield NAGResult(g, rows, scores, {"method": "DiffusionNAG", **asdict(p)}, notes)


# ---------------------------------------------------------------- training one cell


@dataclass
class TrainParams:
    arch: str = field(default=EXAMPLE, metadata=spec(
        "Architecture string", "A NAS-Bench-201 cell, node by node, each incoming edge as op~source.",
        max_chars=MAX_ARCH_CHARS))
    task: Task = field(default="all ten", metadata=spec("Task", "The digit task to train the cell on."))


@dataclass
class TrainResult:
    row: dict             # the trained cell's table row: val_acc, test_acc, params, flops, ...
    table: dict | None    # the ground truth's entry for the cell on the task (None: its class has none yet)
    seconds: float
    stopped: bool         # stopped before the recipe's last step: the row measures the cell as trained so far
    message: str          # markdown for the tab
    parameters: dict


def check_train(p: TrainParams) -> str:
    """The cell's string, normalised; :class:`ParamError` or :class:`~studio.data.nasbench.ArchError`
    (both user errors) for bad input."""
    if not isinstance(p.arch, str) or len(p.arch) > MAX_ARCH_CHARS:
        raise ParamError(f"an architecture string is at most {MAX_ARCH_CHARS} characters")
    validate(p)
    return nasbench.to_string(nasbench.parse(p.arch))


def train_cell(p: TrainParams, manager=None, *, stop: Callable[[], bool] = lambda: False
               ) -> Iterator[Progress | TrainResult]:
    """Train one cell on ``p.task`` with the ground truth's recipe (on the CPU) and compare it with
    the table: yields a Progress per optimizer step (``info``: loss, epoch, epochs), then a
    :class:`TrainResult`. ``stop()`` is polled between steps; when it answers True training ends
    there and the result measures the cell as trained so far (``stopped``). No model is leased."""
    from studio.train.nasbench import train_group

    arch = check_train(p)
    t0 = time.perf_counter()
    last = Progress(0, 0)
    for item in train_group([arch], p.task, stop=stop):
        if isinstance(item, Progress):
            last = item
            yield item
        else:
            row = item[0]
    seconds = time.perf_counter() - t0
    stopped = last.step < last.total or last.total == 0
    known = nasbench.table().get(p.task, {}).get(arch)
    yield TrainResult(row, known, seconds, stopped, train_message(p.task, arch, row, known, seconds, last, stopped),
                      {"method": "DiffusionNAG (train a cell)", **asdict(p), "arch": arch})


def train_message(task: str, arch: str, row: dict, known: dict | None, seconds: float, last: Progress,
                  stopped: bool) -> str:
    """The tab's markdown: the run's figures, then the table's for the same cell (or its class)."""
    from studio.train.nasbench import RECIPE

    if stopped and last.step == 0:
        done = "stopped before the first step"
    elif stopped:
        epoch = (last.info or {}).get("epoch", 0)
        done = f"stopped after {last.step} of {last.total} steps (epoch {epoch} of {RECIPE['epochs']})"
    else:
        done = f"{RECIPE['epochs']} epochs"
    lines = [f"**{task}**, {done} in {seconds:.1f} s: validation accuracy **{row['val_acc']:.3f}**, "
             f"test {row['test_acc']:.3f}, {row['params']:,} parameters, {row['flops']:,} multiply-adds."]
    if known is None:
        lines.append("The ground-truth table has no row for this cell's class on this task yet.")
    else:
        same = "this very cell" if known["trained"] == arch else f"`{known['trained']}` (same function)"
        seeds = "one training seed" if known["seeds"] == 1 else f"mean of {known['seeds']} training seeds"
        lines.append(f"The table ({same}, {seeds}): validation {known['val_acc']:.3f}, test {known['test_acc']:.3f}. "
                     f"This run used seed {RECIPE['seed']}. Differences of a few points are training noise: the "
                     "table's two seeds differ by 3-5 points on average, the same seed on another machine by about 1.")
    return "\n\n".join(lines)
