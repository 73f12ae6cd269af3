"""Edit: a SIGN-style idempotent one-step generator f. Generate with f^k(z); project corrupted images with f^k(x_c).

SIGN-style: there is no official SIGN code; f's objective is this studio's reading (docs/edit.md).

f (:class:`studio.nets.idempotent.IdempotentNet`, zoo ``sign-digits``) is distilled from the
diffusion model ``digits-cond`` (:mod:`studio.train.sign`); ``ign-digits`` is plain IGN, the
same network trained without the teacher. Because the data are f's fixed points, ``f(x_c)``
pulls a corrupted digit back to the digits (zero-shot editing), and every further application
refines. The baseline editor is SDEdit with the teacher: noise ``x_c`` to a level, then DDIM
back, with the same number of network evaluations.

Corruptions: Gaussian noise ``x + sigma n``; a random box covering a share of the image, or a
drawn mask; hidden pixels are set to 0 (mid-grey, "unknown": neither stroke nor background);
``none`` projects the input as it is, e.g. a rough sketch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core.device import MAX_SEED, make_generator, random_seed
from studio.core.manager import ModelManager
from studio.core.metrics import judge_reading, psnr
from studio.core.params import ParamError, spec, validate
from studio.core.results import ImageResult, to_pil, to_strip
from studio.core.sampling import Progress, make_scheduler, run_to_end, sample, start_timestep
from studio.data import digits
from studio.data.drawings import DrawingError, to_digit, to_mask
from studio.methods import method

torch = lazy.load("torch")

TEACHER = "digits-cond"
JUDGE = "judge-digits"
DISPLAY_SIZE = 96
MASK_FILL = 0.0
Corruption = Literal["none", "noise", "box", "mask"]
Source = Literal["test digit", "drawing"]


Mode = Literal["generate", "project"]
GENERATE_FIELDS = ("model", "k", "n_images", "seed", "randomize_seed")
PROJECT_FIELDS = ("model", "source", "test_index", "corruption", "strength", "k", "compare_sdedit", "sdedit_strength",
                  "seed")


@dataclass
class Params:
    """One run of either pane: ``mode="generate"`` reads GENERATE_FIELDS, ``"project"`` PROJECT_FIELDS."""

    mode: Mode = field(default="generate", metadata=spec(
        "Mode", "generate: f^k(z) from noises z; project: f^k(x_c) of a corrupted digit x_c."))
    model: str = field(default="sign-digits", metadata=spec("Generator", "An idempotent generator f (SIGN-style, our reading; or plain IGN)."))
    k: int = field(default=3, metadata=spec("Applications k", "Apply f up to k times: f(z), f(f(z)), ... f^k(z) "
                                            "(generate) or f(x_c), ... f^k(x_c) (project).", minimum=1, maximum=8, step=1))
    n_images: int = field(default=8, metadata=spec("Images", "How many noises z (image i uses seed + i).",
                                                   minimum=1, maximum=32, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "generate: noise z_i from seed + i; project: seeds the "
                                               "corruption and SDEdit's noise.", minimum=0, maximum=MAX_SEED, step=1))
    randomize_seed: bool = field(default=False, metadata=spec("Random seed", "Draw a fresh seed (shown with the result)."))
    source: Source = field(default="test digit", metadata=spec(
        "Source", "A held-out test digit (its true class is known), or your drawing / upload."))
    test_index: int = field(default=0, metadata=spec("Test digit", "Index into the 360 held-out test digits.",
                                                     minimum=0, maximum=digits.TEST_SIZE - 1, step=1))
    corruption: Corruption = field(default="noise", metadata=spec(
        "Corruption", "noise: add Gaussian noise; box: hide a random box; mask: hide what you painted; none: "
        "project the input as it is (a rough sketch is its own corruption)."))
    strength: float = field(default=0.5, metadata=spec(
        "Strength", "noise: sigma (images span -1..1); box: share of the image hidden.", minimum=0.0, maximum=2.0,
        step=0.05))
    compare_sdedit: bool = field(default=True, metadata=spec(
        "Compare with SDEdit", "Also edit with the teacher by SDEdit, using k network evaluations."))
    sdedit_strength: float = field(default=0.1, metadata=spec(
        "SDEdit strength", "How far SDEdit noises the input before denoising (share of the schedule); 0.1 was "
        "SDEdit's best on the benchmark's corrupted digits.", minimum=0.05, maximum=1.0, step=0.05, advanced=True))

    def used(self) -> dict:
        """The fields this mode reads (what its result's parameters record), with the mode."""
        names = GENERATE_FIELDS if self.mode == "generate" else PROJECT_FIELDS
        return {"mode": self.mode, **{n: getattr(self, n) for n in names}}


# ------------------------------------------------------------------------------------------------
# the pieces (used by the tab, the notebook and the benchmark alike)


def corrupt(x: torch.Tensor, kind: str, strength: float, generator: torch.Generator,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, 1, H, W) corrupted; ``mask`` (H, W) bool marks hidden pixels for ``kind="mask"``."""
    if kind == "none":
        return x.clone()
    if kind == "noise":
        return x + strength * torch.randn(x.shape, generator=generator)
    if kind == "box":
        return x.masked_fill(random_boxes(x.shape[0], x.shape[-2:], strength, generator)[:, None], MASK_FILL)
    if kind == "mask":
        if mask is None:
            raise ParamError("paint the area to hide on the mask canvas (or pick another corruption)")
        return x.masked_fill(mask.to(torch.bool)[None, None], MASK_FILL)
    raise ParamError(f"unknown corruption {kind!r}")


def random_boxes(n: int, size, share: float, generator: torch.Generator) -> torch.Tensor:
    """``(n, H, W)`` bool: one axis-aligned box per image covering ``share`` of it (aspect 1:2..2:1)."""
    h, w = size
    out = torch.zeros((n, h, w), dtype=torch.bool)
    if share <= 0:
        return out
    for i in range(n):
        aspect = float(torch.exp((torch.rand((), generator=generator) * 2 - 1) * np.log(2)))
        bh = int(np.clip(round(np.sqrt(share * h * w * aspect)), 1, h))
        bw = int(np.clip(round(share * h * w / bh), 1, w))
        y = int(torch.randint(0, h - bh + 1, (), generator=generator))
        x = int(torch.randint(0, w - bw + 1, (), generator=generator))
        out[i, y:y + bh, x:x + bw] = True
    return out


@lazy.no_grad
def sdedit(dm, x_c: torch.Tensor, evals: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """SDEdit with the teacher (null class), DDIM: of ``ceil(evals / strength)`` steps, run the last
    ``evals`` from ``x_c`` noised to that step's level (diffusers' img2img arithmetic)."""
    total = max(evals, int(np.ceil(evals / strength - 1e-9)))
    sched = make_scheduler("ddim", dm.scheduler_config, dm.prediction_type)
    start, t0 = start_timestep(sched, total, evals / total)
    noise = torch.randn(x_c.shape, generator=generator)
    x_t = sched.add_noise(x_c.clamp(-1, 1), noise, t0.expand(x_c.shape[0]))
    return teacher_samples(dm, x_t, total, start_index=start, scheduler=sched)


@lazy.no_grad
def teacher_samples(dm, z: torch.Tensor, steps: int, start_index: int = 0, scheduler=None) -> torch.Tensor:
    """The teacher's deterministic DDIM sample (null class) from ``z`` (noises, or with ``start_index``
    images already noised to that step's level), clamped to [-1, 1], on the CPU."""
    sched = scheduler or make_scheduler("ddim", dm.scheduler_config, dm.prediction_type)
    dev = device_of(dm.unet)
    null = torch.full((z.shape[0],), int(dm.info.get("null_class", 10)), device=dev)
    x = run_to_end(sample(lambda x, t: dm.model_fn(x, t, {"class_labels": null}), sched, tuple(z.shape),
                          num_inference_steps=steps, latents=z, start_index=start_index, eta=0.0, device=dev))
    return x.clamp(-1, 1).cpu()


def idempotence_error(f, x: torch.Tensor) -> torch.Tensor:
    """``||f(f(x)) - f(x)|| / ||f(x)||`` per image."""
    with torch.no_grad():
        fx = f(x)
        ffx = f(fx)
    return (ffx - fx).flatten(1).norm(dim=1) / fx.flatten(1).norm(dim=1).clamp_min(1e-8)


def paired_difference(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Mean of ``a - b`` over the same items (e.g. per-digit 0/1 judge hits of two editors on the same
    corrupted inputs), with a percentile bootstrap interval that resamples *items*, each item's pair
    kept together (so what the two share cancels). Returns a :class:`studio.core.metrics.Estimate`;
    an interval that covers 0 is "no difference"."""
    from studio.core.metrics import bootstrap_mean

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired values must be two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, n_boot=n_boot, level=level, seed=seed)


def verdict(diff, better: str = "better", worse: str = "worse") -> str:
    """``better`` if the interval of a paired difference lies above 0, ``worse`` if below, else "no difference"."""
    return better if diff.low > 0 else worse if diff.high < 0 else "no difference"


def noises(seed: int, n: int, shape) -> torch.Tensor:
    """z_i from seed + i, each from its own generator (so any one can be remade alone)."""
    return torch.cat([torch.randn((1, *shape), generator=make_generator((seed + i) % (MAX_SEED + 1)))
                      for i in range(n)])


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def apply(f, x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """``[f(x), ..., f^k(x)]`` on f's device, returned on the CPU."""
    return [s.cpu() for s in f.iterate(x.to(device_of(f)), k)]


# ------------------------------------------------------------------------------------------------
# the two panes


@dataclass
class EditResult(ImageResult):
    """Generate: one image per noise, the strip z, f(z), ..., f^k(z) (``tensors`` (n, k + 1, C, H, W)).
    Edit: input, corrupted, f(x_c), ..., f^k(x_c)[, SDEdit] (``tensors`` (m, C, H, W))."""

    captions: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)  # one row per shown image (what the judge read, PSNR, ...)
    notes: list[str] = field(default_factory=list)

    def caption(self, i: int) -> str:
        return self.captions[i] if self.captions else super().caption(i)


def check(p: Params, manager: ModelManager) -> None:
    """Raise :class:`ParamError` for anything the run cannot do."""
    validate(p)
    models = method("edit").models(manager)
    if not models:
        raise ParamError("no idempotent generator is registered; build one with `studio train sign-digits`")
    if p.model not in models:
        raise ParamError(f"unknown generator {p.model!r}; choose one of {', '.join(models)}")
    if p.mode == "project" and p.corruption == "box" and p.strength > 0.9:
        raise ParamError("a box can hide at most 90% of the image (strength <= 0.9 for box)")


def run(p: Params, manager: ModelManager, drawing=None, mask=None) -> Iterator[Progress | EditResult]:
    """Yield a Progress per application of f, then the :class:`EditResult` of the pane ``p.mode``.
    ``drawing`` (an image array) is the input when ``p.source == "drawing"``; ``mask`` (RGBA array)
    marks the hidden pixels when ``p.corruption == "mask"``."""
    check(p, manager)
    if p.mode == "generate":
        return (yield from _generate(p, manager))
    return (yield from _project(p, manager, drawing, mask))


def _apply(f, x: torch.Tensor, k: int) -> Iterator[Progress | list[torch.Tensor]]:
    """Progress per application, then ``[f(x), ..., f^k(x)]`` on the CPU (as :func:`apply`)."""
    x, out = x.to(device_of(f)), []
    for j in range(k):
        with torch.no_grad():
            x = f(x)
        out.append(x.cpu())
        yield Progress(j + 1, k)
    yield out


def _generate(p: Params, manager: ModelManager) -> Iterator[Progress | EditResult]:
    """Noise z_i and f(z_i), ..., f^k(z_i) for each i, one strip image per noise."""
    seed = random_seed() if p.randomize_seed else p.seed
    with manager.use(p.model) as f:
        z = noises(seed, p.n_images, f.sample_shape)
        t0 = time.perf_counter()
        *progress, steps = _apply(f, z, p.k)
        seconds = time.perf_counter() - t0
    yield from progress
    judge_rows = []
    if JUDGE in manager:
        with manager.use(JUDGE) as judge:
            readings = [judge_reading(judge, x) for x in steps]
        judge_rows = [{"image": i, **{f"f^{j + 1}": f"{c[i]} ({p_[i]:.2f})" for j, (c, p_) in enumerate(readings)}}
                      for i in range(p.n_images)]
    rows = torch.stack([z, *steps], dim=1)  # (n, k + 1, C, H, W)
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(p.n_images)]
    captions = [f"seed {s}: z, f(z)" + (", f(f(z))" if p.k > 1 else "") + (f" ... f^{p.k}(z)" if p.k > 2 else "")
                for s in seeds]
    if judge_rows:
        captions = [c + f" · judge on f^{p.k}: {judge_rows[i][f'f^{p.k}']}" for i, c in enumerate(captions)]
    parameters = {"method": "edit/generate", **p.used(), "seed": seed, "randomize_seed": False,
                  "studio_version": __version__}
    yield EditResult(images=[to_strip(r, DISPLAY_SIZE // r.shape[-1]) for r in rows], parameters=parameters,
                     seeds=seeds, tensors=rows, seconds=seconds, captions=captions, table=judge_rows,
                     notes=[f"{1000 * seconds / (p.n_images * p.k):.1f} ms per image per application of f "
                            f"({p.n_images} x {p.k} evaluations in {seconds:.2f} s)"])


def prepare_input(p: Params, drawing=None) -> tuple[torch.Tensor, int | None, list[str]]:
    """(image (1, 1, 16, 16), true class or None, notes). Raises DrawingError for an unusable drawing."""
    if p.source == "test digit":
        test = digits.load("test")
        return torch.from_numpy(test.images[p.test_index: p.test_index + 1]), int(test.labels[p.test_index]), []
    if drawing is None:
        raise ParamError("draw a digit on the canvas or upload an image (or pick a test digit as the source)")
    arr, notes = to_digit(drawing)
    return torch.from_numpy(arr)[None], None, notes


def hidden_pixels(p: Params, mask) -> torch.Tensor | None:
    """The painted mask as (H, W) bool when the corruption is ``mask``; None otherwise."""
    if p.corruption != "mask":
        return None
    try:
        m = to_mask(mask) if mask is not None else None
    except DrawingError as exc:
        raise DrawingError(f"mask: {exc}") from None
    if m is None:
        raise ParamError("the mask is blank: paint over the part of the digit to hide")
    return torch.from_numpy(m)


def _project(p: Params, manager: ModelManager, drawing=None, mask=None) -> Iterator[Progress | EditResult]:
    """Input, corrupted input, f(x_c) .. f^k(x_c), and SDEdit with k evaluations, with the judge's readings."""
    x, label, notes = prepare_input(p, drawing)
    hidden = hidden_pixels(p, mask)
    gen = make_generator(p.seed)
    x_c = corrupt(x, p.corruption, p.strength, gen, hidden)
    t0 = time.perf_counter()
    with manager.use(p.model) as f:
        *progress, steps = _apply(f, x_c, p.k)
    seconds = time.perf_counter() - t0
    yield from progress
    shown = [("input" if label is None else f"test digit {label}", x), ("corrupted", x_c)]
    shown += [("f(x_c)" if j == 0 else f"f^{j + 1}(x_c)", s) for j, s in enumerate(steps)]
    if p.compare_sdedit:
        if TEACHER not in manager:
            notes.append(f"SDEdit needs {TEACHER}, which is not registered")
        else:
            with manager.use(TEACHER) as dm:
                shown.append((f"SDEdit, {p.k} evals", sdedit(dm, x_c, p.k, p.sdedit_strength, gen)))
    images = torch.cat([im for _, im in shown])
    table = judge_table(manager, shown, x)
    captions = [row["image"] + (f" · judge: {row['judge reads']} ({row['probability']:.2f})"
                                if "judge reads" in row else "") for row in table]
    parameters = {"method": "edit/project", **p.used(), "true_class": label, "studio_version": __version__}
    if p.source != "test digit":
        parameters.pop("test_index")
    yield EditResult(images=to_pil(images, DISPLAY_SIZE // images.shape[-1]), parameters=parameters,
                     tensors=images, seconds=seconds, captions=captions, table=table, notes=notes)


def judge_table(manager: ModelManager, shown: list[tuple[str, torch.Tensor]], x: torch.Tensor) -> list[dict]:
    """One row per shown image: what the judge reads (when registered) and the PSNR to the input ``x``."""
    readings = None
    if JUDGE in manager:
        with manager.use(JUDGE) as judge:
            readings = judge_reading(judge, torch.cat([im for _, im in shown]))
    table = []
    for i, (name, im) in enumerate(shown):
        row = {"image": name}
        if readings is not None:
            row["judge reads"] = int(readings[0][i])
            row["probability"] = round(float(readings[1][i]), 3)
        if i > 0:
            row["PSNR to input (dB)"] = round(float(psnr(im, x)[0]), 2)
        table.append(row)
    return table
