"""Debias: bias mitigation without bias labels (InvDiff, Hou et al., KDD 2025; official ``Hundredl/InvDiff``).

The biased world (:mod:`studio.data.biased_shapes`): nine circles in ten are red and nine squares in
ten blue, and most captions leave the colour out, so the biased model ``shapes-biased`` (``shapes-t2i``
fine-tuned on that set) draws "a circle" red. InvDiff never reads the colour: its MAX step infers soft
groups of the training images from the biased model's own per-sample losses, and its MIN step trains a
module ``delta`` (a copy of the UNet, output zeroed at the start) whose prediction is mixed into the
frozen biased model's as ``r * delta + (1 - r) * eps_b``, on the mean plus lambda times the variance
of the groups' losses, so that it fits every group alike (:mod:`studio.core.invdiff`;
the recipe is ``studio train invdiff-shapes``, :mod:`studio.train.invdiff`).

:func:`run` samples ``n`` images for a prompt from the biased model (``r = 0``) and from InvDiff's mix
at ``r`` with the same noise seeds, reads each image's colour with the shapes judge (a model neither
generator trained), and reports the colour histogram and the bias score of each, the judge's accuracy
on what the prompt asks, and the purity of the inferred groups against the true attribute (measured
only; InvDiff never sees it).

Measured (``benchmarks/bench_debias.py``, docs/debias.md): the shipped module, whose groups come from the
official grouper, does not lower the bias at this scale (its groups do not follow the colour); the same
MIN step on the true groups (the benchmark's oracle) does.

Deviations at this scale (docs/debias.md): a 32 x 32 shapes world and its own small text-to-image
model instead of Stable Diffusion on CelebA / Waterbirds; delta is trained for CPU-sized steps; 10%
of the captions emptied while training delta (the official script keeps every caption) so that the
unconditional branch classifier-free guidance reads is debiased too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core.device import MAX_SEED
from studio.core.params import ParamError, spec, validate
from studio.core.results import DISPLAY_SIZE, to_pil
from studio.core.sampling import Progress
from studio.data.text import MAX_PROMPT_CHARS
from studio.methods import method

torch = lazy.load("torch")

MODEL = "invdiff-shapes"
JUDGE = "judge-shapes"
MAX_IMAGES = 64


@dataclass
class Params:
    model: str = field(default=MODEL, metadata=spec(
        "InvDiff module", "The trained delta and the biased model it debiases (its studio.json names the base)."))
    prompt: str = field(default="a circle", metadata=spec(
        "Prompt", "Leave the colour out to see the bias: 'a circle', 'a square at the top left'. Circles and "
        "squares carry the bias; triangles are the control.", max_chars=MAX_PROMPT_CHARS))
    r: float = field(default=0.8, metadata=spec(
        "Mix r", "eps = r * delta + (1 - r) * eps_b: 0 is the biased model, 0.8 the official scripts' value.",
        minimum=0.0, maximum=1.0, step=0.05))
    n_images: int = field(default=16, metadata=spec(
        "Images per model", "The histograms count this many images from each model (the same noise seeds).",
        minimum=1, maximum=MAX_IMAGES, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Image i is drawn from noise seed seed + i, for both models.",
                                               minimum=0, maximum=MAX_SEED - MAX_IMAGES, step=1))
    guidance: float = field(default=2.0, metadata=spec(
        "Guidance", "Classifier-free guidance scale, applied to the mixed prediction (both branches).",
        minimum=0.0, maximum=10.0, step=0.5, advanced=True))
    steps: int = field(default=15, metadata=spec("Steps", "Sampler steps.", minimum=2, maximum=100, step=1,
                                                 advanced=True))
    # UniPC 15: the quality-per-second sweep's pick (benchmarks/results/debias_steps.md; DPM-Solver++ 15 until
    # 2026-12-03): no setting with fewer steps was admitted; UniPC at the same 15 steps was, and held on the report seeds
    scheduler: Literal["dpm++", "unipc", "ddim", "euler", "ddpm"] = field(default="unipc", metadata=spec(
        "Scheduler", "The sampler, the same for both models (UniPC 15: benchmarks/results/debias_steps.md).",
        advanced=True))


@dataclass
class DebiasResult:
    biased: list                 # PIL images of the biased model (r = 0)
    debiased: list               # ... of InvDiff's mix at r, the same noise seeds
    tensors: torch.Tensor        # (2, n, C, H, W): biased, debiased, in [-1, 1]
    readouts: dict[str, dict]    # "biased" / "debiased": colour counts, missing, bias score
    accuracy: dict[str, float]   # "biased" / "debiased": the judge finds what the prompt asks
    asked: dict                  # the attributes the prompt names (shape, colour, region)
    groups: dict                 # the inferred groups against the true attribute: purity, NMI, table
    seeds: list[int]
    seconds: float
    parameters: dict
    notes: list[str] = field(default_factory=list)


def check(p: Params, manager) -> dict:
    """Validate; the attributes the prompt names (ParamError for an empty prompt or an unknown module)."""
    from studio.data import shapes

    validate(p)
    models = method("debias").models(manager)
    if p.model not in models:
        raise ParamError(f"unknown InvDiff module {p.model!r}; choose one of {', '.join(models) or '(none registered)'}")
    if not p.prompt.strip():
        raise ParamError("the prompt is empty; name a shape, e.g. 'a circle'")
    return shapes.parse_concept(p.prompt) or {"shape": None, "colour": None, "region": None}


def group_purity(module) -> dict:
    """The module's inferred groups (argmax of its soft weights) against the biased world's true groups
    (triangle / majority / minority colour): measured here, never given to InvDiff."""
    from studio.core.invdiff import purity
    from studio.data import biased_shapes

    weights = module.groups["weights"]
    truth = biased_shapes.training_set().true_groups
    if len(weights) != len(truth):
        return {"purity": None, "nmi": None, "groups": {}}
    return purity(weights, truth)


def run(p: Params, manager) -> Iterator[Progress | DebiasResult]:
    """Yield a Progress per sampling step (the biased model's run, then the debiased one), then a result."""
    from studio.core import invdiff as I
    from studio.core.conditioning import repeat, text_conditions
    from studio.data.biased_shapes import PROMPT_COLOURS

    asked = check(p, manager)
    t0 = time.perf_counter()
    seeds = [p.seed + i for i in range(p.n_images)]
    images = {}
    with manager.use(p.model) as module:
        base = module.info.get("base", "shapes-biased")
        groups = group_purity(module)
        with manager.use(base) as dm:
            c, u = text_conditions(dm, manager, [p.prompt, ""])
            cond, uncond = repeat(c, p.n_images), repeat(u, p.n_images)
            for k, (name, r) in enumerate((("biased", 0.0), ("debiased", p.r))):
                for item in I.sample(dm, module.delta if r else None, r, cond, uncond, seeds, guidance=p.guidance,
                                     scheduler=p.scheduler, steps=p.steps):
                    if isinstance(item, Progress):
                        yield Progress(k * p.steps + item.step, 2 * p.steps, item.timestep,
                                       info={"stage": name, "r": r})
                    else:
                        images[name] = item
    with manager.use(JUDGE) as judge:
        readouts = {k: I.colour_readout(judge, x, asked["shape"], PROMPT_COLOURS) for k, x in images.items()}
        accuracy = {k: asked_accuracy(judge, x, asked) for k, x in images.items()}
    x = torch.stack([images["biased"], images["debiased"]])
    upscale = max(1, DISPLAY_SIZE // x.shape[-1])
    parameters = {"method": "debias", "base": base, **asdict(p), "studio_version": __version__}
    yield DebiasResult(to_pil(images["biased"], upscale), to_pil(images["debiased"], upscale), x, readouts,
                       accuracy, asked, groups, seeds, time.perf_counter() - t0, parameters,
                       notes(p, asked, readouts, accuracy, groups, base))


def asked_accuracy(judge, images: torch.Tensor, asked: dict) -> float:
    """Share of images in which the judge finds an object with every attribute the prompt names."""
    from studio.core.metrics import shapes_concept_hits

    if not any(v is not None for v in asked.values()):
        return float("nan")
    return float(shapes_concept_hits(judge, images, [asked] * len(images))["all"].mean())


def notes(p: Params, asked: dict, readouts: dict, accuracy: dict, groups: dict, base: str) -> list[str]:
    from studio.data.biased_shapes import MAJORITY, PROMPT_COLOURS

    pair = " / ".join(PROMPT_COLOURS)
    out = []
    for name, label in (("biased", f"{base} (r = 0)"), ("debiased", f"InvDiff, r = {p.r:g}")):
        rd, score = readouts[name], readouts[name]["bias_score"]
        shown = ", ".join(f"{c} {n}" for c, n in rd["counts"].items() if n)
        out.append(f"{label}: {shown or 'no object read'}" + (f"; {rd['missing']} without the shape" if rd["missing"]
                                                               else "")
                   + (f"; bias score over {pair} {score:.2f}" if score is not None else f"; no {pair} object read")
                   + (f"; judge finds what the prompt asks in {accuracy[name]:.0%}" if not np.isnan(accuracy[name])
                      else "") + ".")
    if asked["colour"] is not None:
        out.append("The prompt names a colour: the bias shows when the colour is left out ('a circle').")
    elif asked["shape"] is None:
        out.append("The prompt names no shape: the histograms read the first object the judge finds.")
    elif asked["shape"] not in MAJORITY:
        out.append("Triangles take any of the six colours in the training set: the control, no bias to remove.")
    if groups.get("purity") is not None:
        out.append(f"Inferred groups against the true attribute (triangle / majority colour / minority colour; "
                   f"measured, never given to InvDiff): purity {groups['purity']:.2f}, NMI {groups['nmi']:.2f}.")
    out.append(f"The bias score counts {pair} only (0: balanced, 1: one colour); {p.n_images} images per model "
               "is a small sample: the benchmark's figures use 64 per prompt and report intervals.")
    return out
