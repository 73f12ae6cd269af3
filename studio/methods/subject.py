"""Subject: subject-driven tuning of a next-scale autoregressive model (ARBooth on VAR).

The model is ``var-shapes``, a tiny VAR (Tian et al., NeurIPS 2024) on the shapes world
(:mod:`studio.train.var`). A subject is an attribute combination that world never shows (an orange
square, a hollow red square; :mod:`studio.data.subjects`), or 2-8 uploaded pictures. :func:`run` tunes a
copy of the model for each variant of a comparison (ARBooth, Chung et al., ICCV 2025, as its code
does it, naive full fine-tuning, and ARBooth with one part switched off; :mod:`studio.train.arbooth`),
then draws, with the same seeds for every variant, ``n_images`` for the prompt (which names the
placeholder word: "a sks square at the top left") and ``n_images`` for the class prompt ("a square"),
and measures each variant (:func:`readouts`):

* subject fidelity: mean cosine similarity of the feature-net (``fd-shapes``) features of the
  generated images to the subject images' (a DINO-score stand-in; no model here trained on it);
* prompt fidelity: the shapes judge finds the subject's shape (and the asked region, if the prompt names one);
* drift, on the class prompt ("a square"): **class fidelity**, the judge still finds the class shape; the
  **reading agreement**, 1 minus the total-variation distance between what the judge reads (shape and colour
  of the first object) on the tuned model's images and on the untuned model's (distributions, not seeds: in an
  autoregressive sampler one changed early token re-routes the whole sample, so a per-seed comparison measures
  that chaos, not drift; measured once at 0.05 to 0.13 for every variant); and FD-shapes between the two sets;
* diversity: mean pairwise feature distance between the prompt's images;
* trainable parameters and seconds.

Deviations: see :mod:`studio.train.arbooth` and docs/subject.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core.device import MAX_SEED
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress
from studio.data.text import MAX_PROMPT_CHARS
from studio.methods import method

torch = lazy.load("torch")

MODEL = "var-shapes"
JUDGE, FEATURES = "judge-shapes", "fd-shapes"
MIN_IMAGES, MAX_IMAGES = 2, 8
MAX_SAMPLES = 32
# the recipe variants of studio.train.arbooth.VARIANTS the tab can save (kept here, in plain data, so the
# tab is built without importing the recipe and diffusers with it; tests/test_subject.py checks the keys)
VARIANT_LABELS = {
    "arbooth": "ARBooth (CA + FFN, placeholder, prior distillation, coarse-heavy weights)",
    "full": "Full fine-tuning (every layer, no placeholder block, no prior, uniform weights)",
    "no-prior": "ARBooth without prior distillation",
    "all-layers": "ARBooth tuning every layer",
    "uniform-weights": "ARBooth with uniform scale weights",
    "fine-weights": "ARBooth with reversed weights (coarse 0.5, fine 1)",
    "no-placeholder": "ARBooth without the placeholder block (the word's own embedding)",
}
COMPARISONS: dict[str, tuple[str, ...]] = {
    "arbooth-vs-full": ("arbooth", "full"),
    "ablations": ("arbooth", "full", "no-prior", "all-layers", "uniform-weights", "no-placeholder"),
    "scale-weights": ("arbooth", "uniform-weights", "fine-weights"),
    "arbooth": ("arbooth",),
}
COMPARISON_LABELS = {
    "arbooth-vs-full": "ARBooth vs naive full fine-tuning",
    "ablations": "ARBooth, full fine-tuning, and each part of ARBooth switched off",
    "scale-weights": "ARBooth's coarse-heavy scale weights vs uniform vs reversed",
    "arbooth": "ARBooth only",
}


@dataclass
class Params:
    model: str = field(default=MODEL, metadata=spec("Model", "A VAR model (next-scale prediction) of the zoo."))
    subject: Literal["orange-square", "hollow-red-square", "pink-circle", "hollow-green-triangle", "upload"] = field(
        default="orange-square", metadata=spec(
            "Subject", "A bundled subject (4 pictures of an attribute combination the model never saw) or your "
            "uploaded pictures."))
    shape: Literal["square", "circle", "triangle"] = field(default="square", metadata=spec(
        "Class of your subject", "Uploads only: the class word of the class prompt ('a square'); a bundled subject "
        "brings its own."))
    comparison: Literal["arbooth-vs-full", "ablations", "scale-weights", "arbooth"] = field(
        default="arbooth-vs-full", metadata=spec("Compare", "Which tunings to train side by side (same images, "
                                                 "iterations and seeds)."))
    prompt: str = field(default="a sks square at the top left", metadata=spec(
        "Prompt", "Name the subject with the placeholder word 'sks': 'a sks square at the bottom right'.",
        max_chars=MAX_PROMPT_CHARS))
    n_images: int = field(default=8, metadata=spec("Images per model", "For the prompt and for the class prompt.",
                                                   minimum=2, maximum=MAX_SAMPLES, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Image i of every model uses seed + i; tuning uses seed too.",
                                               minimum=0, maximum=MAX_SEED - MAX_SAMPLES, step=1))
    # iterations and lr: chosen for ARBooth on the selection subjects by benchmarks/bench_subject.py
    iterations: int = field(default=100, metadata=spec("Iterations", "Tuning iterations per variant (2 images each).",
                                                       minimum=1, maximum=1000, step=1, advanced=True))
    lr: float = field(default=3e-4, metadata=spec("Learning rate", "AdamW, constant.", minimum=1e-6, maximum=1e-1,
                                                  advanced=True))
    cfg: float = field(default=4.0, metadata=spec(  # var-shapes' sampler, chosen on the selection prompts
        "Guidance", "Classifier-free guidance at the finest scale (ramps up from 0 at the coarsest, as VAR's sampler).",
        minimum=0.0, maximum=10.0, step=0.5, advanced=True))
    top_k: int = field(default=0, metadata=spec("Top-k", "0: no top-k filter.", minimum=0, maximum=256, step=1,
                                                advanced=True))
    top_p: float = field(default=0.0, metadata=spec("Top-p", "0: no nucleus filter.", minimum=0.0, maximum=1.0,
                                                    step=0.01, advanced=True))


@dataclass
class SubjectResult:
    images: dict[str, torch.Tensor]          # "base" and each variant: (n, 3, H, W) for the prompt, in [-1, 1]
    class_images: dict[str, torch.Tensor]    # ... for the class prompt, the same seeds
    subject_images: torch.Tensor             # (N, 3, H, W) what the variants were tuned on
    rows: list[dict]                         # per model: the readouts (variant, fidelity, drift, ...)
    models: dict                             # variant id -> the tuned VARModel (for Save)
    seeds: list[int]
    seconds: float
    parameters: dict
    notes: list[str] = field(default_factory=list)


def check(p: Params, manager, images: np.ndarray | None) -> tuple[torch.Tensor, str]:
    """Validate; the subject images (N, 3, 32, 32) in [-1, 1] and the class word."""
    from studio.data import shapes, subjects
    from studio.core.var import PLACEHOLDER

    validate(p)
    models = method("subject").models(manager)
    if p.model not in models:
        raise ParamError(f"unknown VAR model {p.model!r}; choose one of {', '.join(models) or '(none registered)'}")
    if not p.prompt.strip():
        raise ParamError(f"the prompt is empty; name the subject with '{PLACEHOLDER}', e.g. 'a {PLACEHOLDER} square'")
    if p.subject == "upload":
        if images is None or len(images) < MIN_IMAGES:
            raise ParamError(f"upload {MIN_IMAGES} to {MAX_IMAGES} pictures of your subject first")
        if len(images) > MAX_IMAGES:
            raise ParamError(f"at most {MAX_IMAGES} subject pictures, got {len(images)}")
        if images.shape[1:] != (3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) or images.dtype != np.uint8:
            raise ParamError(f"subject pictures must be {shapes.IMAGE_SIZE} x {shapes.IMAGE_SIZE} RGB (uint8)")
        return shapes.to_model_range(images), p.shape
    subject = subjects.get(p.subject)
    return shapes.to_model_range(subjects.images(subject)), subject.shape


def subject_pictures(data: list[bytes]) -> tuple[np.ndarray, list[str]]:
    """Uploaded files -> (N, 3, 32, 32) uint8 and notes. Each is re-decoded, must be roughly square,
    and is resized to 32 x 32; ParamError names the file number otherwise."""
    from PIL import Image

    from studio.data.drawings import DrawingError, open_image
    from studio.data.shapes import IMAGE_SIZE

    arrays, notes = [], []
    for i, blob in enumerate(data, 1):
        try:
            image, _ = open_image(blob)
        except DrawingError as exc:
            raise ParamError(f"picture {i}: {exc}") from None
        w, h = image.size
        if min(w, h) < 16 or abs(w - h) > 0.1 * max(w, h):
            raise ParamError(f"picture {i} is {w} x {h}; use a square picture of at least 16 x 16 pixels")
        if (w, h) != (IMAGE_SIZE, IMAGE_SIZE):
            notes.append(f"picture {i}: {w} x {h} resized to {IMAGE_SIZE} x {IMAGE_SIZE}")
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
    return np.stack(arrays) if arrays else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8), notes


def text_conditions(vm, encoder, prompts: list[str]) -> list[dict]:
    """Each prompt's condition for ``vm`` (batch 1): the placeholder replaced by its learned block, if any."""
    from studio.core import var as V
    from studio.data import text

    enc = text.encode(encoder, prompts)
    if vm.placeholder is not None:
        enc = V.with_placeholder(enc, [V.placeholder_span(encoder, q) for q in prompts], vm.placeholder)
    return [V.take(enc, [i]) for i in range(len(prompts))]


def draw(vm, encoder, prompt: str, seeds: list[int], p: Params) -> Iterator[Progress | torch.Tensor]:
    """``len(seeds)`` images of ``prompt`` from ``vm`` (guidance against the empty caption)."""
    from studio.core import var as V

    cond, uncond = text_conditions(vm, encoder, [prompt, ""])
    n = len(seeds)
    yield from V.sample(vm, V.take(cond, [0] * n), V.take(uncond, [0] * n), seeds, cfg=p.cfg, top_k=p.top_k,
                        top_p=p.top_p)


def run(p: Params, manager, images: np.ndarray | None = None,
        stop: Callable[[], bool] | None = None) -> Iterator[Progress | SubjectResult]:
    """Tune every variant of ``p.comparison`` (a Progress per iteration), sample, measure, yield the result.
    ``stop``: polled between iterations; a stopped variant keeps what it trained, later variants are skipped."""
    from studio.train import arbooth as A

    subject_x, shape = check(p, manager, images)
    t0 = time.perf_counter()
    variants = COMPARISONS[p.comparison]
    settings = A.TuneSettings(iterations=p.iterations, lr=p.lr, seed=p.seed)
    seeds = [p.seed + i for i in range(p.n_images)]
    models, prompts, classes = {}, {}, {}
    with manager.use(p.model) as vm, manager.use("text-encoder") as encoder:
        K = len(vm.tokenizer.scales)
        total = len(variants) * p.iterations + (1 + len(variants)) * 2 * K  # tuning steps, then sampling passes
        for k, name in enumerate(variants):
            if stop is not None and stop() and models:
                break
            gen = A.tune(vm, encoder, subject_x, shape, A.VARIANTS[name], settings, stop)
            for item in gen:
                if isinstance(item, Progress):
                    yield Progress(k * p.iterations + item.step, total,
                                   info={"variant": name, **{f"{name} {key}": v for key, v in item.info.items()
                                                             if v is not None}})
                else:
                    models[name] = item
        done = len(variants) * p.iterations
        for name, model in (("base", vm), *models.items()):
            for out, prompt in ((prompts, p.prompt), (classes, f"a {shape}")):
                for item in draw(model, encoder, prompt, seeds, p):
                    if isinstance(item, Progress):
                        yield Progress(done + item.step, total, info={"sampling": name}, preview=item.preview)
                    else:
                        out[name] = item
                done += K
    with manager.use(JUDGE) as judge, manager.use(FEATURES) as fdnet:
        rows = [readouts(name, judge, fdnet, subject_x, prompts[name], classes[name], classes["base"], shape,
                         p.prompt, models.get(name)) for name in prompts]
    parameters = {"method": "subject", **asdict(p), "shape": shape, "variants": list(models),
                  "studio_version": __version__}
    yield SubjectResult(prompts, classes, subject_x, rows, models, seeds, time.perf_counter() - t0, parameters,
                        notes(p, rows, shape))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-8)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-8)
    return a @ b.T


def readouts(name: str, judge, fdnet, subject_x: torch.Tensor, images: torch.Tensor, class_images: torch.Tensor,
             base_class_images: torch.Tensor, shape: str, prompt: str, tuned=None) -> dict:
    """One model's figures (see the module docstring); the base model's drift is 0 by definition."""
    from studio.core import metrics
    from studio.data import shapes

    asked = shapes.parse_concept(prompt.replace("sks ", "")) or {}
    per = per_image(judge, fdnet, subject_x, images, shape, [asked.get("region")] * len(images))
    drift = class_drift(judge, class_images, base_class_images, shape)
    info = tuned.info if tuned is not None else {}
    return {"model": name, "subject_fidelity": metrics.bootstrap_mean(per["fidelity"]).to_dict(),
            "prompt_fidelity": metrics.bootstrap_mean(per["prompt"]).to_dict(),
            "class_fidelity": metrics.bootstrap_mean(drift["class_shape"]).to_dict(),
            "drift_agreement": drift["agreement"],
            "drift_fd": drift_fd(fdnet, class_images, base_class_images) if name != "base" else 0.0,
            "diversity": diversity(per["features"]),
            "trainable_params": info.get("trainable_params", 0), "tune_seconds": info.get("tune_seconds", 0.0),
            "iterations": info.get("iterations_done", 0)}


def per_image(judge, fdnet, subject_x: torch.Tensor, images: torch.Tensor, shape: str,
              regions: list[int | None]) -> dict[str, np.ndarray]:
    """Per generated image: ``fidelity``, its mean cosine similarity to the subject pictures on the feature
    net; ``prompt``, 1 if the judge finds ``shape`` (in ``regions[i]`` when given); and its ``features``."""
    from studio.core import metrics

    feats = metrics.features(fdnet, images)
    fidelity = _cosine(feats, metrics.features(fdnet, subject_x)).mean(1)
    concepts = [{"shape": shape, "colour": None, "region": r} for r in regions]
    return {"fidelity": fidelity, "prompt": metrics.shapes_concept_hits(judge, images, concepts)["all"],
            "features": feats}


def class_drift(judge, class_images: torch.Tensor, base_class_images: torch.Tensor, shape: str,
                n_boot: int = 200, seed: int = 0) -> dict:
    """``class_shape`` (per image: the judge finds ``shape``) and ``agreement``: 1 - the total-variation
    distance between the judge's readings (first object's shape and colour) of the two sets, with a
    bootstrap interval (both sets resampled); 1 for identical sets."""
    from studio.core.metrics import Estimate
    from studio.data.shapes import SHAPES

    mine, base = first_objects(judge, class_images), first_objects(judge, base_class_images)
    kinds = sorted({k for k in mine + base if k is not None}) + [None]
    code = {k: i for i, k in enumerate(kinds)}
    a, b = np.asarray([code[k] for k in mine]), np.asarray([code[k] for k in base])

    def agree(x, y):
        return 1 - 0.5 * np.abs(np.bincount(x, minlength=len(kinds)) / len(x)
                                - np.bincount(y, minlength=len(kinds)) / len(y)).sum()

    rng = np.random.default_rng(seed)
    boots = [agree(rng.choice(a, len(a)), rng.choice(b, len(b))) for _ in range(n_boot)]
    est = Estimate(float(agree(a, b)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)), len(a))
    class_shape = np.asarray([k is not None and k[0] == SHAPES.index(shape) + 1 for k in mine], float)
    return {"class_shape": class_shape, "agreement": est.to_dict()}


def drift_fd(fdnet, class_images: torch.Tensor, base_class_images: torch.Tensor) -> float:
    """FD-shapes between the tuned and the untuned model's class-prompt images (no interval: a few images)."""
    from studio.core import metrics

    return metrics.frechet_distance(*metrics.gaussian_stats(metrics.features(fdnet, class_images)),
                                    *metrics.gaussian_stats(metrics.features(fdnet, base_class_images)))


def diversity(features: np.ndarray) -> float:
    """Mean pairwise feature distance (nan for fewer than two images)."""
    pair = np.linalg.norm(features[:, None] - features[None], axis=-1)[np.triu_indices(len(features), 1)]
    return float(pair.mean()) if len(pair) else float("nan")


def first_objects(judge, images: torch.Tensor) -> list[tuple[int, int] | None]:
    """The (shape, colour) index the judge reads in the first occupied cell of each image (None: empty)."""
    with torch.no_grad():
        s_cells, c_cells = judge.read(images.float())
    out = []
    for s, c in zip(s_cells, c_cells):
        occupied = (s > 0).nonzero().flatten()
        out.append((int(s[occupied[0]]), int(c[occupied[0]])) if len(occupied) else None)
    return out


def notes(p: Params, rows: list[dict], shape: str) -> list[str]:
    out = []
    for r in rows:
        label = "untuned model" if r["model"] == "base" else VARIANT_LABELS.get(r["model"], r["model"])
        out.append(f"{label}: subject fidelity {r['subject_fidelity']['value']:.3f}, prompt fidelity "
                   f"{r['prompt_fidelity']['value']:.0%}, class fidelity {r['class_fidelity']['value']:.0%}, "
                   f"class-prompt reading agreement with the untuned model {r['drift_agreement']['value']:.0%}, "
                   f"diversity {r['diversity']:.2f}"
                   + (f"; {r['trainable_params']:,} trainable parameters, {r['tune_seconds']:.0f} s" if r["iterations"]
                      else "") + ".")
    from studio.core.var import PLACEHOLDER

    if PLACEHOLDER not in p.prompt.split():
        out.append(f"The prompt does not name '{PLACEHOLDER}': the tuned models were asked for the class, not the subject.")
    out.append(f"{p.n_images} images per model is a small sample: benchmarks/bench_subject.py reports intervals on "
               f"more images and on subjects other than those its settings were chosen on. The class prompt is "
               f"'a {shape}'.")
    return out


def prompt_again(p: Params, manager, models: dict) -> Iterator[Progress | dict[str, torch.Tensor]]:
    """The untuned ``p.model`` and each tuned model in ``models`` (a finished run's) on ``p.prompt``,
    the same seeds for all: a Progress per scale, then {"base" | variant: (n, 3, H, W)}."""
    from studio.core.sampling import relay

    validate(p)
    if not p.prompt.strip():
        raise ParamError("the prompt is empty; name the subject with 'sks', e.g. 'a sks square at the top'")
    if p.model not in method("subject").models(manager):
        raise ParamError(f"unknown VAR model {p.model!r}")
    seeds = [p.seed + i for i in range(p.n_images)]
    out = {}
    with manager.use(p.model) as vm, manager.use("text-encoder") as encoder:
        for name, model in (("base", vm), *models.items()):
            out[name] = yield from relay(draw(model, encoder, p.prompt, seeds, p))
    yield out


def save(result: SubjectResult, variant: str, name: str, manager) -> str:
    """Keep ``variant``'s tuned model of ``result`` as ``name`` (tuned tensors + placeholder, safetensors)
    and register it with the manager; returns the name."""
    from studio.core import adapters
    from studio.core.var import subject_state

    if variant not in result.models:
        raise ParamError(f"no tuned model {variant!r} in this run; choose one of {', '.join(result.models)}")
    name = adapters.check_name(name)
    if name in manager:
        raise ParamError(f"a model named {name!r} already exists; choose another name")
    base_key, tuned = result.parameters["model"], result.models[variant]
    with manager.use(base_key) as base:
        state = subject_state(tuned, base)
    params = {"method": "subject", "base": base_key, "weights": "var-subject", "variant": variant,
              "subject": result.parameters["subject"], "shape": result.parameters["shape"],
              "settings": tuned.info.get("settings", {}), "studio_version": __version__}
    adapters.save_tuned(state, params, name)
    manager.register(name, lambda: tuned, info=adapters.tuned_info(manager, base_key))
    return name
