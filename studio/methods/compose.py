"""Compose: Composable Diffusion (Liu, Li, Du, Torralba, Tenenbaum, ECCV 2022).

Each concept is an energy; a product of experts p(x | c_1..c_n) ~ p(x) prod_i (p(x | c_i) / p(x))^w_i
has the score sum below, so at every denoising step, with signed weights (w_i < 0 is NOT)::

    eps_u   = eps(x_t, t, "")                       # the unconditional prediction
    eps_i   = eps(x_t, t, c_i)                      # one per concept
    eps_hat = eps_u + sum_i w_i (eps_i - eps_u)     # the official code's combiner
    x_{t-1} = scheduler.step(eps_hat, t, x_t)

The n + 1 predictions come from **one batched forward pass** (the official code makes one pass
per condition; ``evaluation="sequential"`` does that, for the benchmark's speed ratio).

Prompt syntax of the official pipeline and of diffusers' community ``composable_stable_diffusion``:
``prompt="a | b | c"``, ``weights="7.5 | 7.5 | -7.5"``. Deviation, on purpose: the official code
appends *one* ``guidance`` for a missing weight and fails on two; here every missing (or blank)
weight takes ``guidance``, and more weights than concepts is an error rather than a silent cut.

NOT by a negative weight is not diffusers' ``negative_prompt``: that one *replaces* the base
eps_u by eps(c_neg), giving ``eps(c_neg) + w (eps(c) - eps(c_neg))``, while compose-NOT keeps the
unconditional base, ``eps_u + w (eps(c) - eps(c_neg))`` (weights +w and -w); they differ by one
unit of ``eps(c_neg) - eps_u``. Both are offered (``negative_prompt`` replaces the base, as the
official pipeline lets it) and the benchmark measures both.

On the embedded ``shapes-t2i`` model the shapes judge reads every image and reports, per concept,
whether it is satisfied (an AND concept present as asked, a NOT concept absent).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

from studio import __version__, lazy
from studio.core import guidance as G
from studio.core.conditioning import repeat, text_conditions
from studio.core.device import MAX_SEED, random_seed
from studio.core.models import DiffusionModel
from studio.core.manager import ModelManager
from studio.core.params import ParamError, spec, validate
from studio.core.results import DISPLAY_SIZE, ImageResult, to_pil
from studio.core.sampling import TELEPORT_HELP, Progress, SchedulerName, make_scheduler, sample_images, teleport_plan
from studio.data import shapes
from studio.data.text import MAX_PROMPT_CHARS
from studio.methods import method

torch = lazy.load("torch")

MAX_CONCEPTS = 8
WEIGHT_LIMIT = 20.0
JUDGE = "judge-shapes"
Evaluation = Literal["batched", "sequential"]

EXAMPLES: dict[str, tuple[str, str]] = {  # label -> (prompt, weights)
    "two objects (AND)": ("a red circle at the top left | a blue square at the bottom right", "2 | 2"),
    "three objects (AND)": ("a yellow triangle at the top | a cyan circle at the bottom left | "
                            "a magenta square at the bottom right", "2 | 2 | 2"),
    "colour without a shape (NOT)": ("a green shape at the center | a green triangle", "2 | -2"),
    "object without another (NOT)": ("a red circle at the left | a blue shape", "2 | -2"),
}


@dataclass(frozen=True)
class Concept:
    text: str
    weight: float  # signed: w < 0 is NOT

    @property
    def op(self) -> Literal["AND", "NOT"]:
        return "NOT" if self.weight < 0 else "AND"


def parse_concepts(prompt: str, weights: str = "", default_weight: float = 2.0) -> list[Concept]:
    """``"a | b | c"`` and ``"w1 | w2 | w3"`` -> concepts; a missing or blank weight takes ``default_weight``."""
    texts = [t.strip() for t in (prompt or "").split("|")]
    if not any(texts):
        raise ParamError("no concepts: type at least one, e.g. 'a red circle at the top left | a blue square'")
    if len(texts) > MAX_CONCEPTS:
        raise ParamError(f"{len(texts)} concepts; the limit is {MAX_CONCEPTS} (each adds a forward pass per step)")
    for i, t in enumerate(texts, 1):
        if not t:
            raise ParamError(f"concept {i} is empty: remove the extra '|' or write a concept there")
        if len(t) > MAX_PROMPT_CHARS:
            raise ParamError(f"concept {i} is {len(t)} characters long; the limit is {MAX_PROMPT_CHARS}")
    raw = [w.strip() for w in weights.split("|")] if (weights or "").strip() else []
    if len(raw) > len(texts):
        raise ParamError(f"{len(raw)} weights for {len(texts)} concepts; give one weight per concept (or fewer)")
    values = []
    for i, w in enumerate(raw + [""] * (len(texts) - len(raw)), 1):
        try:
            v = float(w) if w else float(default_weight)
        except ValueError:
            raise ParamError(f"weight {i} ({w!r}) is not a number; write weights like '2 | 2 | -2'") from None
        if not math.isfinite(v) or abs(v) > WEIGHT_LIMIT:
            raise ParamError(f"weight {i} is {w or v}; weights must lie between {-WEIGHT_LIMIT:g} and {WEIGHT_LIMIT:g}")
        values.append(v)
    return [Concept(t, v) for t, v in zip(texts, values)]


def to_syntax(concepts: list[Concept]) -> tuple[str, str]:
    """The inverse of :func:`parse_concepts`: (prompt, weights) strings."""
    return " | ".join(c.text for c in concepts), " | ".join(f"{c.weight:g}" for c in concepts)


@dataclass
class Params:
    model: str = field(default="shapes-t2i", metadata=spec("Model", "A text-to-image model: the zoo's shapes-t2i or a loaded Stable Diffusion folder."))
    prompt: str = field(default=EXAMPLES["two objects (AND)"][0], metadata=spec(
        "Concepts", "Concepts separated by '|', e.g. 'a red circle at the top left | a blue square'.",
        max_chars=MAX_CONCEPTS * (MAX_PROMPT_CHARS + 3)))
    weights: str = field(default="", metadata=spec(
        "Weights", "One per concept, separated by '|'; negative = NOT. Missing ones take the default weight.",
        max_chars=MAX_CONCEPTS * 12))
    guidance: float = field(default=2.0, metadata=spec(
        "Default weight", "Weight of a concept without one (with one concept this is plain CFG).",
        minimum=0.0, maximum=WEIGHT_LIMIT, step=0.25))
    negative_prompt: str = field(default="", metadata=spec(
        "Negative prompt (diffusers operator)", "Replaces the unconditional base eps_u by eps(negative); "
        "not the same as a NOT concept.", max_chars=MAX_PROMPT_CHARS))
    # chosen by bench_compose.py --samplers on its selection set (the same as Generate's for shapes-t2i; tested)
    scheduler: SchedulerName = field(default="dpm++", metadata=spec("Scheduler", "Any diffusers scheduler the model supports."))
    steps: int = field(default=15, metadata=spec("Steps", "Denoising steps.", minimum=1, maximum=200, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Image i uses seed + i.", minimum=0, maximum=MAX_SEED, step=1))
    randomize_seed: bool = field(default=False, metadata=spec("Random seed", "Draw a fresh seed (shown with the result)."))
    n_images: int = field(default=4, metadata=spec("Images", "How many images.", minimum=1, maximum=16, step=1))
    evaluation: Evaluation = field(default="batched", metadata=spec(
        "Evaluation", "batched: the n + 1 predictions in one forward pass; sequential: one pass per "
        "condition, as the official code does (same images, slower).", advanced=True))
    preview_every: int = field(default=5, metadata=spec(
        "Preview every", "Show the predicted clean image every k steps (0 = no previews).", minimum=0, maximum=50,
        step=1, advanced=True))
    teleport: int = field(default=0, metadata=spec("Teleported steps", TELEPORT_HELP, minimum=0, maximum=199, step=1,
                                                   advanced=True))


@dataclass
class ComposeResult(ImageResult):
    concepts: list[Concept] = field(default_factory=list)
    # verdicts[i][j]: does image i satisfy concept j (AND: present as asked; NOT: absent)? None = not judged
    verdicts: list[list[bool | None]] = field(default_factory=list)

    def caption(self, i: int) -> str:
        """'seed 7: ✓ a red circle; ✗ NOT a blue shape' (the judge's reading of image i; '?' where a
        concept names nothing the judge knows); just 'seed 7' when nothing was judged."""
        if not self.verdicts:
            return super().caption(i)
        marks = []
        for c, ok in zip(self.concepts, self.verdicts[i]):
            mark = "?" if ok is None else ("✓" if ok else "✗")
            marks.append(f"{mark} {'NOT ' if c.op == 'NOT' else ''}{c.text}")
        return f"seed {self.seeds[i]}: " + "; ".join(marks)


def check(p: Params, manager: ModelManager) -> list[Concept]:
    """Validate ``p``; return its concepts. Raises :class:`ParamError` with what to do."""
    validate(p)
    concepts = parse_concepts(p.prompt, p.weights, p.guidance)
    models = method("compose").models(manager)
    if p.model not in models:
        raise ParamError(f"unknown model {p.model!r}; choose one of {', '.join(models) or 'none (build one with `studio train shapes-t2i`)'}")
    if manager.info(p.model).get("conditioning") not in ("text", None):
        raise ParamError(f"{p.model!r} is not a text-to-image model; Compose needs one (e.g. shapes-t2i)")
    return concepts


def composed_denoiser(dm: DiffusionModel, manager: ModelManager, concepts: list[Concept], n: int,
                      negative_prompt: str = "", evaluation: Evaluation = "batched"):
    """The composed denoiser for a batch of ``n`` images (``negative_prompt`` replaces the empty base)."""
    conds = text_conditions(dm, manager, [negative_prompt] + [c.text for c in concepts])
    base, *rest = [repeat(c, n) for c in conds]
    return G.combine(dm.model_fn, base, rest, [c.weight for c in concepts], batched=evaluation == "batched")


def judge_verdicts(manager: ModelManager, images: torch.Tensor, concepts: list[Concept]) -> list[list[bool | None]]:
    """Per image and concept, the shapes judge's verdict (None where a concept names no shape, colour
    or region the judge knows). Images (B, 3, 32, 32) in [-1, 1]."""
    from studio.nets.judges import concept_present

    asked = [shapes.parse_concept(c.text) for c in concepts]
    with manager.use(JUDGE) as judge:
        s_cells, c_cells = judge.read(images.float())
    out = []
    for i in range(images.shape[0]):
        row = []
        for c, a in zip(concepts, asked):
            if a is None:
                row.append(None)
                continue
            present = bool(concept_present(s_cells[i:i + 1], c_cells[i:i + 1], a["shape"], a["colour"], a["region"]))
            row.append(present if c.op == "AND" else not present)
        out.append(row)
    return out


def judged(manager: ModelManager, dm: DiffusionModel) -> bool:
    return dm.info.get("domain") == "shapes" and JUDGE in manager


def run(p: Params, manager: ModelManager) -> Iterator[Progress | ComposeResult]:
    """Yield a Progress per step (with previews), then a :class:`ComposeResult`."""
    concepts = check(p, manager)
    seed = random_seed() if p.randomize_seed else p.seed
    t0 = time.perf_counter()
    with manager.use(p.model) as dm:
        if not isinstance(dm, DiffusionModel) or dm.conditioning != "text":
            raise ParamError(f"{p.model!r} is not a text-to-image diffusion model; Compose needs one")
        scheduler = make_scheduler(p.scheduler, dm.scheduler_config, dm.prediction_type)
        denoise = composed_denoiser(dm, manager, concepts, p.n_images, p.negative_prompt, p.evaluation)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(p.n_images)]
        for item in sample_images(dm, denoise, scheduler, seeds, num_inference_steps=p.steps,
                                  teleport_to=teleport_plan(dm, p.teleport, p.steps),
                                  preview_every=p.preview_every):
            if isinstance(item, Progress):
                yield item
            else:
                x = item
        verdicts = judge_verdicts(manager, x, concepts) if judged(manager, dm) else []
    parameters = {"method": "compose", **asdict(p), "seed": seed, "randomize_seed": False,
                  "concepts": [{"text": c.text, "weight": c.weight, "op": c.op} for c in concepts],
                  "precision": dm.precision, "studio_version": __version__}
    yield ComposeResult(images=to_pil(x, max(1, DISPLAY_SIZE // x.shape[-1])), parameters=parameters, seeds=seeds,
                        tensors=x, seconds=time.perf_counter() - t0, concepts=concepts, verdicts=verdicts)
