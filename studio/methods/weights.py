"""Weights: generate a digits classifier's weights for a task with diffusion (D2NWG; p-diff as the baseline).

* **D2NWG** (Soro et al., ICLR 2025; official ``sorobedio/DNNWG``): a VAE over the flat weight
  vectors of a zoo of classifiers trained on many tasks, a dataset encoder that reads a few labelled
  examples per class (image features from the studio's self-supervised encoder ``simclr-digits``,
  never the judge; pooled within each class, then across classes, and aligned with the weight
  latents by a symmetric contrastive loss), and a latent diffusion model conditioned on that
  encoding (concatenated as channels). It takes a task it never saw: give it a few examples.
* **p-diff** (Wang et al. 2024; official ``NUS-HPC-AI-Lab/Neural-Network-Parameter-Diffusion``), the
  baseline in its own paper's setting: one autoencoder + DDPM per task, learnt from 200 checkpoints
  of continued training of the last layer; it can only reproduce the tasks it has models of.

Deviations at this scale (docs/weights.md): a tiny CNN of 1,954 parameters instead of ResNets; one
zoo of 52 digits tasks (rotations, stroke styles, noise, class subsets) fine-tuned from one shared
base; the weight VAE's latent 4 x 8 x 8; 5 examples per class (the official set encoder reads 20);
the contrastive loss's temperature 1 as the official one. The recipe is ``studio train d2nwg-digits``
(:mod:`studio.train.weightgen`); the sampling and measuring code is :mod:`studio.core.weightgen`.

:func:`run` samples ``k`` weight vectors for the task (a task of the zoo, seen or held out, or your own
labelled examples), evaluates them all at once on the task's test split beside the zoo's own models
for the task and random initialisations, reads memorisation (each generated model's nearest training
checkpoint: distance and prediction agreement), then fine-tunes the best generated model (best on the
few examples, never on the test split) beside a random initialisation (training from scratch on the
same examples) and the zoo model of the most similar seen task, a live curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from studio import lazy
from studio.core.device import MAX_SEED
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress, relay
from studio.data import digit_tasks
from studio.methods import method

torch = lazy.load("torch")

MODEL = "d2nwg-digits"
ENCODER = "simclr-digits"
OWN = "my examples"
DEFAULT_TASK = digit_tasks.HELD_OUT[0].id
MAX_K = 128
MAX_EXAMPLES = 200
MAX_FINETUNE = 500
CURVE_POINTS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500)
TASK_CHOICES = tuple(t.id for t in digit_tasks.ALL) + (OWN,)


@dataclass
class Params:
    model: str = field(default=MODEL, metadata=spec(
        "Generator", "D2NWG (conditioned on a few examples: any task) or p-diff (one model per task: only its tasks)."))
    task: str = field(default=DEFAULT_TASK, metadata=spec(
        "Task", "A digits task of the zoo (seen by the generator, or held out) or 'my examples' (drawn or uploaded).",
        choices=TASK_CHOICES))
    k: int = field(default=32, metadata=spec("Models to generate", "How many weight vectors to sample.",
                                             minimum=1, maximum=MAX_K, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "The sampler's noise (and the random initialisations').",
                                               minimum=0, maximum=MAX_SEED, step=1))
    finetune_steps: int = field(default=100, metadata=spec(
        "Fine-tuning steps", "SGD steps on the few examples, from the best generated model, a random "
        "initialisation and the nearest zoo model (0: no fine-tuning).", minimum=0, maximum=MAX_FINETUNE, step=1))
    support_seed: int = field(default=0, metadata=spec(
        "Few-shot draw", "Which 5 training examples per class of a zoo task the generator reads and "
        "fine-tuning uses.", minimum=0, maximum=MAX_SEED, step=1, advanced=True))
    steps: int = field(default=25, metadata=spec("Sampler steps", "Denoising steps of the latent diffusion.",
                                                 minimum=2, maximum=200, step=1, advanced=True))
    scheduler: Literal["ddim", "dpm++", "ddpm"] = field(default="ddim", metadata=spec(
        "Scheduler", "DDIM (deterministic), DPM-Solver++, or the ancestral DDPM sampler of both papers.",
        advanced=True))
    lr: float = field(default=0.01, metadata=spec(  # == studio.core.weightgen.FINETUNE_LR (imported lazily)
        "Fine-tuning rate", "SGD learning rate (momentum 0.9); 0.01 was chosen among 0.01 / 0.03 / 0.1 on the "
        "selection tasks (the benchmark).",
        minimum=1e-4, maximum=1.0, advanced=True))


@dataclass
class WeightsResult:
    thetas: torch.Tensor           # (k, 1954) the generated classifiers
    accuracy: np.ndarray           # (k,) each one's accuracy on the evaluation images
    zoo_accuracy: np.ndarray       # the zoo's own models of the task (empty for your examples)
    random_accuracy: np.ndarray    # (k,) random initialisations
    nearest_task: str              # the most similar seen task (per-class mean features)
    nearest_accuracy: float        # its zoo model's accuracy here
    memorisation: list[dict]       # one row per generated model: nearest training checkpoint, distance, agreement
    spread: float                  # median distance between two training checkpoints of one task
    curve: list[dict]              # fine-tuning: {"step", "generated", "random", "nearest"}
    best: int                      # index of the generated model fine-tuned (best on the few examples)
    evaluated_on: str              # "test split of <task> (n images)" or "your n examples"
    seconds: dict[str, float]
    parameters: dict
    notes: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> torch.Tensor:  # what the contract compares between two runs with one seed
        return self.thetas


@dataclass
class CurveStep(Progress):
    """A fine-tuning step: ``info`` holds the curve so far."""


def check(p: Params, manager, images=None, labels=None) -> None:
    validate(p)
    models = method("weights").models(manager)
    if p.model not in models:
        raise ParamError(f"unknown generator {p.model!r}; choose one of {', '.join(models) or '(none registered)'}")
    if p.task == OWN:
        check_examples(images, labels)
    elif images is not None:
        raise ParamError(f"examples are read only with the task {OWN!r}")


def check_examples(images, labels) -> tuple[torch.Tensor, np.ndarray]:
    """Your labelled examples as ((n, 1, 16, 16) in [-1, 1], (n,) labels 0..9); ParamError otherwise."""
    if images is None or labels is None or len(labels) == 0:
        raise ParamError("give some labelled examples (draw digits and label them, or upload) for 'my examples'")
    x = torch.as_tensor(images).float()
    y = np.asarray(labels)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 16, 16):
        raise ParamError(f"examples must be 16 x 16 grey images, got shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ParamError(f"{len(x)} images but {len(y)} labels")
    if len(x) > MAX_EXAMPLES:
        raise ParamError(f"at most {MAX_EXAMPLES} examples, got {len(x)}")
    if not torch.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
        raise ParamError("example pixels must be finite and in [-1, 1]")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
        raise ParamError("labels must be whole numbers 0 to 9")
    if len(set(y.tolist())) < 2:
        raise ParamError("give examples of at least two classes")
    return x, y.astype(np.int64)


def task_data(p: Params, images=None, labels=None):
    """(support x, support y, eval x, eval y, how the evaluation is described)."""
    if p.task == OWN:
        x, y = check_examples(images, labels)
        return x, y, x, y, f"your {len(y)} examples (there is no test split of them)"
    s, te = digit_tasks.support(p.task, 5, p.support_seed), digit_tasks.data(p.task, "test")
    return (torch.from_numpy(s.images), s.labels, torch.from_numpy(te.images), te.labels,
            f"the test split of {p.task} ({len(te.labels)} images)")


def class_means(features: torch.Tensor, labels) -> torch.Tensor:
    """(10, d) mean feature per class (zeros where a class is absent): how similar two tasks look."""
    labels = torch.as_tensor(np.asarray(labels))
    return torch.stack([features[labels == c].mean(0) if (labels == c).any() else torch.zeros(features.shape[1])
                        for c in range(10)])


def nearest_seen_task(encoder, feats: torch.Tensor, labels, seed: int = 0) -> str:
    """The seen task whose few-shot set's per-class mean features are closest to these (L2, present classes)."""
    from studio.core.weightgen import image_features

    mine = class_means(feats, labels)
    present = torch.as_tensor([(np.asarray(labels) == c).any() for c in range(10)])
    best, best_d = "", float("inf")
    for t in digit_tasks.SEEN:
        s = digit_tasks.support(t.id, 5, seed)
        d = float((class_means(image_features(encoder, s.images), s.labels) - mine)[present].norm())
        if d < best_d:
            best, best_d = t.id, d
    return best


def generate(gen, p: Params, feats: torch.Tensor, labels) -> Iterator[Progress | torch.Tensor]:
    """(k, P) sampled weight vectors: D2NWG conditioned on the few-shot set, or p-diff's model of the task."""
    from studio.core import weightgen as G

    if gen.method == "pdiff":
        if p.task not in gen.info["tasks"]:
            raise ParamError(f"p-diff learns one model per task and has models of {', '.join(gen.info['tasks'])} "
                             f"only; D2NWG ({MODEL}) takes any task, including your examples")
        yield from G.pdiff_sample(gen, p.task, p.k, p.seed, p.steps, p.scheduler)
        return
    sets, present = G.few_shot_set(feats, labels, G.PER_CLASS, torch.Generator().manual_seed(p.support_seed))
    yield from G.d2nwg_sample(gen, sets, present, p.k, p.seed, p.steps, p.scheduler)


def run(p: Params, manager, *, images=None, labels=None, stop: Callable[[], bool] = lambda: False
        ) -> Iterator[Progress | WeightsResult]:
    """Sample, evaluate, read memorisation, fine-tune (a :class:`CurveStep` per recorded step), then one result."""
    from studio.core import weightgen as G
    from studio.nets.weightgen import init_vector

    check(p, manager, images, labels)
    x_s, y_s, x_e, y_e, described = task_data(p, images, labels)
    seconds, t0 = {}, time.perf_counter()
    with manager.use(ENCODER) as encoder:
        feats = G.image_features(encoder, x_s)
        near_task = nearest_seen_task(encoder, feats, y_s, p.support_seed)
    with manager.use(p.model) as gen:
        thetas = yield from relay(generate(gen, p, feats, y_s))
        seconds["sample"] = time.perf_counter() - t0
        ck, ck_tasks = gen.training_checkpoints(p.task if gen.method == "pdiff" else None)
        ck, zoo_all = ck.clone(), gen.tensors.get("checkpoints")
        zoo_tasks = gen.info.get("checkpoint_tasks", [])
        zoo_own = (ck if gen.method == "pdiff" else
                   zoo_all[[i for i, t in enumerate(zoo_tasks) if t == p.task]]) if p.task != OWN else ck[:0]
        near_model = (zoo_all[zoo_tasks.index(near_task)] if zoo_all is not None else ck[0]).clone()
    acc = G.accuracy(thetas, x_e, y_e)
    gen_rand = torch.Generator().manual_seed(p.seed)
    randoms = torch.stack([init_vector(gen_rand) for _ in range(p.k)])
    zoo_acc = G.accuracy(zoo_own, x_e, y_e) if len(zoo_own) else np.zeros(0)
    rand_acc = G.accuracy(randoms, x_e, y_e)
    near = G.memorisation(thetas, ck, x_e, ck_tasks)
    seconds["sample_and_evaluate"] = time.perf_counter() - t0
    rows = [{"model": i, "accuracy": round(float(acc[i]), 4), "nearest_checkpoint": int(near.index[i]),
             "its_task": ck_tasks[near.index[i]], "distance": round(float(near.distance[i]), 3),
             "agreement": round(float(near.agreement[i]), 4)} for i in range(p.k)]
    best = int(np.argmax(G.accuracy(thetas, x_s, y_s)))  # best on the few examples, never on the test split
    curve = []
    if p.finetune_steps:
        starts = torch.stack([thetas[best], randoms[0], near_model])
        record = tuple(s for s in CURVE_POINTS if s <= p.finetune_steps) + (p.finetune_steps,)
        for step, accs, _ in G.finetune(starts, x_s, y_s, p.finetune_steps, p.lr, seed=p.seed, eval_x=x_e,
                                        eval_y=y_e, record=record):
            curve.append({"step": step, "generated": float(accs[0]), "random": float(accs[1]),
                          "nearest": float(accs[2])})
            yield CurveStep(step, p.finetune_steps, info={"curve": list(curve)})
            if stop():
                break
    seconds["total"] = time.perf_counter() - t0
    yield WeightsResult(thetas, acc, zoo_acc, rand_acc, near_task, float(G.accuracy(near_model[None], x_e, y_e)[0]),
                        rows, near.spread, curve, best, described, {k: round(v, 3) for k, v in seconds.items()},
                        parameters(p, gen_name=p.model), notes(p, acc, zoo_acc, rand_acc, near, described))


def parameters(p: Params, gen_name: str) -> dict:
    return {"method": "D2NWG" if gen_name.startswith("d2nwg") else "p-diff", **asdict(p)}


def notes(p: Params, acc, zoo_acc, rand_acc, near, described: str) -> list[str]:
    out = [f"{p.k} generated models on {described}: mean accuracy {acc.mean():.1%} (best {acc.max():.1%}); "
           f"random initialisations {rand_acc.mean():.1%}"
           + (f"; the zoo's own models of this task {zoo_acc.mean():.1%}" if len(zoo_acc) else "") + "."]
    if p.task != OWN:
        out.append(f"This task is {digit_tasks.split_of(digit_tasks.task(p.task))} for the generators "
                   "('seen': in their training data; 'held-out' and 'selection': never).")
    copies = float((near.agreement > 0.99).mean())
    out.append(f"Memorisation: {copies:.0%} of the generated models agree with some training checkpoint on more "
               f"than 99% of the images; median distance to it {np.median(near.distance):.2f} (two checkpoints of "
               f"one task lie {near.spread:.2f} apart).")
    return out


def model_file(result: WeightsResult, index: int) -> bytes:
    """One generated classifier as safetensors (:class:`studio.nets.weightgen.TinyCNN`'s state_dict), the
    run's parameters and its accuracy in the metadata."""
    from safetensors.torch import save

    from studio.nets.weightgen import unflatten

    if not 0 <= index < len(result.thetas):
        raise ParamError(f"model index must be 0 to {len(result.thetas) - 1}")
    state = {k: v.contiguous().clone() for k, v in unflatten(result.thetas[index]).items()}
    meta = {"parameters": json.dumps(result.parameters), "model_index": str(index),
            "accuracy": f"{result.accuracy[index]:.4f}", "evaluated_on": result.evaluated_on,
            "architecture": "studio.nets.weightgen.TinyCNN"}
    return save(state, metadata=meta)
