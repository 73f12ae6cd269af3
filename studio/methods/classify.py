"""Classify: a conditional diffusion model read as a classifier (Diffusion Classifier, Li, Prabhudesai,
Duggal, Brown, Pathak, ICCV 2023; official code diffusion-classifier, ``eval_prob_adaptive.py``).

Bayes' rule with a uniform prior turns the model's conditional likelihoods into a posterior, and the
ELBO makes each likelihood a denoising error: the candidate whose noise prediction best explains
the noised image is the most likely label. As the official code does it, for an image ``x0`` and
candidates ``c``:

* ``maxN = max(n_samples)`` evenly spaced timesteps ``t_k = T // maxN // 2 + k (T // maxN)``, and
  one noise per (timestep slot, trial), drawn once per image and **shared by every candidate**
  (the paper's variance reduction: errors vary a lot with the noise, their differences between
  candidates much less);
* the error of candidate ``c`` at ``(t, eps)``: ``|| eps - eps_theta(sqrt(abar_t) x0 +
  sqrt(1 - abar_t) eps, t, c) ||^2`` averaged over elements (``l2``; ``l1`` and ``huber`` as options);
* adaptive rounds (``n_samples`` / ``to_keep``, e.g. 5 / 3 then 25 / 1): round r evaluates the
  still-remaining candidates on ``n_samples[r]`` timesteps of the grid (``grid[len // n // 2 ::
  len // n][:n]``) not evaluated before, re-using earlier evaluations, ranks them by their mean
  error over everything evaluated so far and keeps the ``to_keep[r]`` lowest; the last one kept
  is the answer. A timestep's noise slot is its order of first evaluation, as in the official code.

Every (candidate, timestep, trial) is one network evaluation, counted exactly (the official
code's cost). Dropped candidates keep the mean error they had when dropped: those scores are
not calibrated probabilities (the authors say so, issue #23); the tab shows errors, not a softmax.

Deviations, said here and in the tab: models predicting ``v`` or ``x0`` are scored in noise space
(their prediction converted to ``eps_hat`` at the same ``x_t``), so the error is the paper's for
every model; ``shared_noise=False`` draws an independent noise per candidate too (the paper's
ablation, for the benchmark). Multiple prompts per class (the official CSV's argmin) are not used:
one candidate is one label.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core.conditioning import text_conditions
from studio.core.device import MAX_SEED, make_generator
from studio.core.guidance import cat_conds
from studio.core.models import DiffusionModel
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress, make_scheduler, predicted_eps
from studio.data import digits, shapes
from studio.core.readers import CONTRASTIVE, DIGIT_READERS, contrastive_reading, readings  # noqa: F401
from studio.core.timestep_weights import learn_timestep_weights, weighted_choice  # noqa: F401 (the method's API)
from studio.data.drawings import to_digit, to_picture
from studio.data.shapes import BINDING, binding_candidates, binding_scene, question_candidates  # noqa: F401

torch = lazy.load("torch")
F = lazy.load("torch.nn.functional")

Source = Literal["test digit", "drawing", "shapes scene", "image"]
Question = Literal["shape", "colour", "region", "caption", "bind colour", "bind shape", "bind object", "bind place",
                   "custom"]
Loss = Literal["l2", "l1", "huber"]
MAX_CANDIDATES = 50
MAX_EVALS = 20000  # network evaluations one run may cost (a 50-candidate, 400-timestep run)


@dataclass
class Params:
    model: str = field(default="digits-cond", metadata=spec(
        "Model", "A conditional diffusion model: digits-cond (the ten classes are the candidates) or a text model."))
    source: Source = field(default="test digit", metadata=spec(
        "Image", "Digits models: a test digit or your drawing. Text models: a rendered shapes scene (shapes world) "
        "or an uploaded image (centre-cropped and resized to the model's size)."))
    test_index: int = field(default=0, metadata=spec("Test digit", "Which of the 360 test digits.", minimum=0,
                                                     maximum=359, step=1))
    scene_seed: int = field(default=0, metadata=spec("Scene seed", "The shapes scene (one object) to render.",
                                                     minimum=0, maximum=MAX_SEED, step=1))
    question: Question = field(default="shape", metadata=spec(
        "Question", "Text models: candidates that differ only in the shape, colour or region of the scene's "
        "object, or every shape and colour at its region (caption); bind ...: a two-object scene and two "
        "candidates that name only what is in it, so only binding tells them apart (colour of a shape, shape at "
        "a region, which shape has a colour, colour at a region); custom: your own candidates."))
    candidates: str = field(default="", metadata=spec(
        "Candidates", "Custom candidates separated by '|' (2 to 50), e.g. 'a red circle | a blue circle'.",
        max_chars=MAX_CANDIDATES * 80))
    # the default schedule: bench_classify.py's choice on training digits (the cheapest at the best accuracy; tested)
    n_samples: str = field(default="5 25", metadata=spec(
        "Timesteps per round", "Evenly spaced timesteps evaluated by the end of each adaptive round, increasing "
        "(official CIFAR-10: '50 500').", max_chars=40))
    to_keep: str = field(default="3 1", metadata=spec(
        "Candidates kept per round", "How many candidates survive each round, decreasing to 1 (official: '5 1').",
        max_chars=40))
    n_trials: int = field(default=1, metadata=spec("Noises per timestep", "Independent noises per timestep.",
                                                   minimum=1, maximum=8, step=1, advanced=True))
    loss: Loss = field(default="l2", metadata=spec("Error", "l2 (official default), l1 or huber.", advanced=True))
    shared_noise: bool = field(default=True, metadata=spec(
        "Shared noise", "One noise per timestep for every candidate (the paper's variance reduction); off: "
        "an independent noise per candidate too (its ablation).", advanced=True))
    seed: int = field(default=0, metadata=spec("Seed", "Seeds the noises.", minimum=0, maximum=MAX_SEED, step=1))
    batch_size: int = field(default=64, metadata=spec("Batch size", "Evaluations per forward pass (speed only).",
                                                      minimum=1, maximum=512, step=1, advanced=True))


@dataclass
class ClassifyResult:
    """The verdict and everything that led to it (``errors``: each candidate's mean error over its
    evaluations; ``dropped_in``: the round a candidate was dropped in, None for the answer)."""

    candidates: list[str]
    errors: np.ndarray
    evaluations: np.ndarray  # per candidate
    dropped_in: list[int | None]
    predicted: int
    evals: int  # network evaluations in all
    rounds: list[dict]  # per round: timesteps added, candidates evaluated, kept
    table: list[dict]  # one row per evaluation: candidate, t, trial, error
    image: torch.Tensor  # (C, H, W) in [-1, 1], what was classified
    truth: int | None  # index of the true candidate when the source knows it
    parameters: dict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    readings: list[dict] = field(default_factory=list)  # what the judge and a supervised classifier read

    @property
    def label(self) -> str:
        return self.candidates[self.predicted]

    def csv(self) -> bytes:
        """Every evaluation as CSV, the parameters in ``#`` lines above the header."""
        import json

        out = io.StringIO()
        for key, value in self.parameters.items():
            out.write(f"# {key}: {json.dumps(value)}\n")
        out.write("candidate,timestep,trial,error\n")
        for row in self.table:
            out.write(f"{json.dumps(row['candidate'])},{row['t']},{row['trial']},{row['error']:.6g}\n")
        return out.getvalue().encode()


# ----------------------------------------------------------------------------- the schedule

def parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").replace("|", " ").split()]
    except ValueError:
        raise ParamError(f"{name}: whole numbers separated by spaces, e.g. '10 50'; got {text!r}") from None
    if not values:
        raise ParamError(f"{name}: give at least one number")
    return values


def schedule(p: Params, n_candidates: int, T: int) -> list[tuple[int, int]]:
    """The adaptive rounds as (timesteps by the end of the round, candidates kept); raises ParamError."""
    n_samples, to_keep = parse_ints(p.n_samples, "Timesteps per round"), parse_ints(p.to_keep, "Candidates kept per round")
    if len(n_samples) != len(to_keep):
        raise ParamError(f"give one 'candidates kept' per round: {len(n_samples)} rounds of timesteps, "
                         f"{len(to_keep)} numbers kept")
    if any(b <= a for a, b in zip(n_samples, n_samples[1:])) or n_samples[0] < 1 or n_samples[-1] > T:
        raise ParamError(f"timesteps per round must increase, from 1 to at most {T}; got {p.n_samples!r}")
    if any(b >= a for a, b in zip(to_keep, to_keep[1:])) or to_keep[-1] != 1:
        raise ParamError(f"candidates kept must decrease to 1; got {p.to_keep!r}")
    if to_keep[0] > n_candidates:
        raise ParamError(f"the first round keeps {to_keep[0]} of only {n_candidates} candidates")
    return list(zip(n_samples, to_keep))


def timestep_grid(T: int, max_n: int) -> list[int]:
    """The official evenly spaced timesteps: ``range(T // max_n // 2, T, T // max_n)[:max_n]``."""
    return list(range(T // max_n // 2, T, T // max_n))[:max_n]


def round_timesteps(grid: list[int], n: int) -> list[int]:
    """Round r's timesteps: ``grid[len // n // 2 :: len // n][:n]`` (the official subsampling)."""
    return grid[len(grid) // n // 2::len(grid) // n][:n]


def planned_evals(plan: list[tuple[int, int]], n_candidates: int, grid: list[int], n_trials: int) -> int:
    """Network evaluations the rounds will cost (known before any is made)."""
    done, remaining, total = set(), n_candidates, 0
    for n, keep in plan:
        new = [t for t in round_timesteps(grid, n) if t not in done]
        total += remaining * len(new) * n_trials
        done.update(new)
        remaining = keep
    return total


def error_of(eps: torch.Tensor, eps_hat: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample error, the official ``l2`` / ``l1`` / ``huber`` (element mean)."""
    if loss == "l2":
        return F.mse_loss(eps_hat, eps, reduction="none").flatten(1).mean(1)
    if loss == "l1":
        return F.l1_loss(eps_hat, eps, reduction="none").flatten(1).mean(1)
    return F.huber_loss(eps_hat, eps, reduction="none", delta=1.0).flatten(1).mean(1)


def adaptive(eps_fn, x0: torch.Tensor, n_candidates: int, plan: list[tuple[int, int]], abar: torch.Tensor, *,
             n_trials: int = 1, loss: str = "l2", shared_noise: bool = True, seed: int = 0, batch_size: int = 64,
             T: int = 1000, flow: bool = False) -> Iterator[Progress | dict]:
    """The official ``eval_prob_adaptive`` on one image ``x0`` (C, H, W) in model space.

    ``eps_fn(x_t, t, idx)``: the noise estimates for candidates ``idx`` (B,) at ``x_t`` (B, C, H, W),
    timesteps ``t`` (B,). ``flow``: a rectified-flow model (``abar`` unused): ``x_t = (1 - s) x0 + s eps`` with
    ``s = t / T``, and ``eps_fn`` returns the velocity, compared with ``eps - x0`` (the follow-up paper's SD3
    variant, ``target = noise - x0``). Yields a Progress per forward batch, then a dict: ``errors`` (mean per
    candidate), ``evaluations``, ``dropped_in``, ``predicted``, ``evals``, ``rounds``, ``table``."""
    max_n = max(n for n, _ in plan)
    grid = timestep_grid(T, max_n)
    gen = make_generator(seed)
    slots = max_n * n_trials * (1 if shared_noise else n_candidates)
    noise = torch.randn((slots, *x0.shape), generator=gen).to(x0.device, x0.dtype)
    total = planned_evals(plan, n_candidates, grid, n_trials)
    remaining = list(range(n_candidates))
    sums, counts = torch.zeros(n_candidates, dtype=torch.float64), torch.zeros(n_candidates, dtype=torch.long)
    dropped: list[int | None] = [None] * n_candidates
    evaluated: list[int] = []  # timesteps in order of first evaluation (their noise slot)
    table, rounds, done = [], [], 0
    for r, (n, keep) in enumerate(plan):
        new = [t for t in round_timesteps(grid, n) if t not in evaluated]
        first = len(evaluated)
        evaluated.extend(new)
        rows = [(c, t, k, (first + j) * n_trials + k) for c in remaining for j, t in enumerate(new)
                for k in range(n_trials)]  # (candidate, t, trial, noise slot)
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            cand = torch.tensor([c for c, *_ in chunk])
            t = torch.tensor([t for _, t, _, _ in chunk])
            slot = torch.tensor([s if shared_noise else c * max_n * n_trials + s for c, _, _, s in chunk])
            eps = noise[slot]
            if flow:
                sig = (t.float() / T).to(x0.device, x0.dtype).view(-1, *[1] * x0.dim())
                x_t, target = (1 - sig) * x0[None] + sig * eps, eps - x0[None]
            else:
                a = abar[t].to(x0.device, x0.dtype).view(-1, *[1] * x0.dim())
                x_t, target = a.sqrt() * x0[None] + (1 - a).sqrt() * eps, eps
            with torch.no_grad():
                err = error_of(target, eps_fn(x_t, t.to(x0.device), cand.to(x0.device)), loss).double().cpu()
            sums.index_add_(0, cand, err)
            counts.index_add_(0, cand, torch.ones_like(cand))
            table += [{"candidate": c, "t": tt, "trial": k, "error": float(e)} for (c, tt, k, _), e in zip(chunk, err)]
            done += len(chunk)
            yield Progress(done, total, timestep=None, info={"round": r + 1, "rounds": len(plan),
                                                             "remaining": list(remaining)})
        mean = sums[remaining] / counts[remaining]
        order = torch.argsort(mean, stable=True).tolist()  # lowest error first
        kept = [remaining[i] for i in order[:keep]]
        for c in remaining:
            if c not in kept:
                dropped[c] = r + 1
        rounds.append({"round": r + 1, "timesteps_added": new, "evaluated": list(remaining), "kept": kept})
        remaining = kept
    errors = (sums / counts.clamp(min=1)).numpy()
    yield {"errors": errors, "evaluations": counts.numpy(), "dropped_in": dropped, "predicted": remaining[0],
           "evals": done, "rounds": rounds, "table": table}


# ----------------------------------------------------------------------------- inputs and candidates

def custom_candidates(text: str) -> list[str]:
    items = [c.strip() for c in text.split("|")]
    if any(not c for c in items):
        raise ParamError("a candidate is empty: separate 2 to 50 candidates with '|', e.g. 'a red circle | a blue circle'")
    if len(items) < 2:
        raise ParamError("give at least two candidates separated by '|' (one candidate leaves nothing to choose)")
    if len(items) > MAX_CANDIDATES:
        raise ParamError(f"{len(items)} candidates; the limit is {MAX_CANDIDATES}")
    if len(set(items)) < len(items):
        raise ParamError("two candidates are the same; each must differ")
    return items


def prepare(p: Params, dm: DiffusionModel, drawing=None) -> tuple[torch.Tensor, list[str], int | None, list[str], dict]:
    """(image (C, H, W) in [-1, 1], candidate names, true index or None, notes, conditions
    (class: {"class_labels": (n,)}; text: the prompts))."""
    notes: list[str] = []
    if dm.conditioning == "class":
        if p.source in ("shapes scene", "image"):
            raise ParamError(f"{p.model!r} is a digits model: pick a test digit or draw one")
        if p.question == "custom" and p.candidates.strip():
            raise ParamError(f"{p.model!r} classifies among its classes; custom candidates are for text models")
        names = dm.info.get("class_names") or [str(i) for i in range(int(dm.info.get("null_class", 10)))]
        if p.source == "test digit":
            test = digits.load("test")
            image, truth = torch.from_numpy(test.images[p.test_index]), int(test.labels[p.test_index])
        else:
            if drawing is None:
                raise ParamError("draw a digit on the canvas or upload an image (or pick a test digit as the source)")
            arr, notes = to_digit(drawing)
            image, truth = torch.from_numpy(arr), None
        return image, list(names), truth, notes, {"class_labels": torch.arange(len(names))}
    if dm.conditioning != "text":
        raise ParamError(f"{p.model!r} is not conditional: a diffusion classifier needs a class or text model")
    if p.source in ("test digit", "drawing"):
        raise ParamError(f"{p.model!r} is a text model: pick 'shapes scene' or upload an image")
    if p.source == "image":
        if drawing is None:
            raise ParamError("upload an image to classify (or pick a shapes scene)")
        if p.question != "custom":
            raise ParamError("an uploaded image has no known object: pick 'custom' and type the candidates")
        arr, notes = to_picture(drawing, dm.image_shape[-1])
        names = custom_candidates(p.candidates)
        return torch.from_numpy(arr), names, None, notes, {"prompts": names}
    if dm.info.get("domain") != "shapes":
        raise ParamError(f"{p.model!r} does not draw the shapes world; its scenes are for shapes-t2i")
    if p.question in BINDING:
        scene = binding_scene(p.scene_seed)
        image = shapes.render_tensor(scene)[0]
        names, truth = binding_candidates(*scene.objects, p.question), 0
        if p.scene_seed % 2:  # the true candidate is not always listed first
            names, truth = names[::-1], 1
        return image, names, truth, notes, {"prompts": names}
    scene = shapes.random_scene(np.random.default_rng(p.scene_seed), n_objects=1)
    image = shapes.render_tensor(scene)[0]
    if p.question == "custom":
        names, truth = custom_candidates(p.candidates), None
    else:
        names, truth = question_candidates(scene.objects[0], p.question)
    return image, names, truth, notes, {"prompts": names}


def check(p: Params, manager) -> None:
    validate(p)
    if p.model not in manager:
        raise ParamError(f"unknown model {p.model!r}; load it in the Models tab or pick a zoo model")


def run(p: Params, manager, drawing=None) -> Iterator[Progress | ClassifyResult]:
    """Classify one image (``drawing``: the sketch or upload when ``p.source == "drawing"``): a
    Progress per forward batch, then the :class:`ClassifyResult`."""
    check(p, manager)
    t0 = time.perf_counter()
    with manager.use(p.model) as lent:
        if not isinstance(lent, DiffusionModel):
            raise ParamError(f"{p.model!r} is not a diffusion model")
        # fp32 always: a recorded reduced precision (studio.core.precision) was measured on samples, not on
        # the noise-prediction errors this classifier ranks, whose figures were all taken in fp32
        dm = replace(lent, precision="fp32")
        image, names, truth, notes, conds = prepare(p, dm, drawing)
        if len(names) > MAX_CANDIDATES:
            raise ParamError(f"{len(names)} candidates; the limit is {MAX_CANDIDATES}")
        flow = dm.prediction_type == "flow"  # rectified flow: velocity errors on its own path
        sched = make_scheduler("flow-euler" if flow else "ddpm", dm.scheduler_config, dm.prediction_type)
        T = int(sched.config.num_train_timesteps)
        plan = schedule(p, len(names), T)
        cost = planned_evals(plan, len(names), timestep_grid(T, max(n for n, _ in plan)), p.n_trials)
        if cost > MAX_EVALS:
            raise ParamError(f"this schedule costs {cost} network evaluations; the limit is {MAX_EVALS} "
                             "(fewer timesteps or candidates)")
        device = next(dm.unet.parameters()).device
        if "prompts" in conds:
            table = cat_conds(text_conditions(dm, manager, conds["prompts"]))
        else:
            table = conds
        table = {k: v.to(device) for k, v in table.items()}
        x0 = dm.encode(image[None].to(device))[0]

        def eps_fn(x_t, t, idx):
            cond = {k: v[idx] for k, v in table.items()}
            pred = dm.model_fn(x_t, t, cond)
            return pred if flow else predicted_eps(sched, pred, x_t, t, dm.prediction_type)

        out = None
        for item in adaptive(eps_fn, x0, len(names), plan, None if flow else sched.alphas_cumprod, n_trials=p.n_trials,
                             loss=p.loss, shared_noise=p.shared_noise, seed=p.seed, batch_size=p.batch_size, T=T,
                             flow=flow):
            if isinstance(item, Progress):
                yield item
            else:
                out = item
    read = readings(manager, dm, image) + contrastive_reading(manager, dm, image, names)
    parameters = {"method": "classify", **asdict(p), "candidate_names": names, "studio_version": __version__}
    for row in out["table"]:
        row["candidate"] = names[row["candidate"]]
    yield ClassifyResult(names, out["errors"], out["evaluations"], out["dropped_in"], out["predicted"], out["evals"],
                         out["rounds"], out["table"], image.cpu(), truth, parameters,
                         time.perf_counter() - t0, notes, read)
