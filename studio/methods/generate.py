"""Generate: plain (classifier-free guided) sampling from a zoo model.

Digits models take a class, text models a prompt. ``guidance`` is the classifier-free scale
``s`` in ``eps = eps_u + s (eps_c - eps_u)``: 0 is the unconditional model, 1 the plain
conditional one. Image ``i`` of a batch uses seed ``seed + i``, so any single image can be
remade alone with ``n_images=1`` and its own seed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

from studio import __version__, lazy
from studio.core import guidance as G
from studio.core.conditioning import repeat, text_conditions
from studio.core.device import MAX_SEED, random_seed
from studio.core.models import DiffusionModel
from studio.core.manager import ModelManager
from studio.core.params import ParamError, spec, validate
from studio.core.results import DISPLAY_SIZE, ImageResult, to_pil
from studio.core.sampling import (TELEPORT_HELP, Progress, SchedulerError, SchedulerName, make_scheduler,
                                  sample_images, teleport_plan)
from studio.data.text import MAX_PROMPT_CHARS
from studio.methods import method

torch = lazy.load("torch")

MODEL_KEYS = ("digits-cond", "shapes-t2i", "text-encoder")


@dataclass
class Params:
    model: str = field(default="shapes-t2i", metadata=spec("Model", "A zoo diffusion model (or a loaded folder)."))
    prompt: str = field(default="a red circle at the top left", metadata=spec(
        "Prompt", "For text models: one object works best, e.g. 'a blue square at the bottom right'.",
        max_chars=MAX_PROMPT_CHARS))
    digit: int = field(default=3, metadata=spec("Digit", "For class models: the class to draw.", minimum=0, maximum=9, step=1))
    # the default model's own (shapes-t2i's studio.json: default_scheduler, default_steps; tested)
    scheduler: SchedulerName = field(default="unipc", metadata=spec("Scheduler", "Any diffusers scheduler the model supports."))
    steps: int = field(default=8, metadata=spec("Steps", "Denoising steps.", minimum=1, maximum=200, step=1))
    guidance: float = field(default=2.0, metadata=spec(
        "Guidance scale", "Classifier-free scale: 0 = unconditional, 1 = conditional, higher = stronger.",
        minimum=0.0, maximum=15.0, step=0.25))
    seed: int = field(default=0, metadata=spec("Seed", "Image i uses seed + i.", minimum=0, maximum=MAX_SEED, step=1))
    randomize_seed: bool = field(default=False, metadata=spec("Random seed", "Draw a fresh seed (shown with the result)."))
    n_images: int = field(default=4, metadata=spec("Images", "How many images.", minimum=1, maximum=16, step=1))
    preview_every: int = field(default=5, metadata=spec(
        "Preview every", "Show the predicted clean image every k steps (0 = no previews).", minimum=0, maximum=50,
        step=1, advanced=True))
    teleport: int = field(default=0, metadata=spec("Teleported steps", TELEPORT_HELP, minimum=0, maximum=199, step=1,
                                                   advanced=True))


def _conditions(dm: DiffusionModel, p: Params, manager: ModelManager, n: int) -> tuple[dict | None, dict | None]:
    """(conditional, unconditional) UNet kwargs, each batched to ``n``."""
    if dm.conditioning == "class":
        null = int(dm.info.get("null_class", 10))
        return ({"class_labels": torch.full((n,), p.digit, dtype=torch.long)},
                {"class_labels": torch.full((n,), null, dtype=torch.long)})
    if dm.conditioning == "text":
        cond, uncond = text_conditions(dm, manager, [p.prompt, ""])
        return repeat(cond, n), repeat(uncond, n)
    return None, None


def check(p: Params, manager: ModelManager) -> None:
    """Raise :class:`ParamError` for anything the run cannot do."""
    validate(p)
    models = method("generate").models(manager)
    if not models:
        raise ParamError("no diffusion model is registered; build one with `studio train digits-cond`")
    if p.model not in models:
        raise ParamError(f"unknown model {p.model!r}; choose one of {', '.join(models)}")


def run(p: Params, manager: ModelManager) -> Iterator[Progress | ImageResult]:
    """Yield a Progress per step (with previews), then an :class:`ImageResult`."""
    check(p, manager)
    seed = random_seed() if p.randomize_seed else p.seed
    t0 = time.perf_counter()
    with manager.use(p.model) as dm:
        if not isinstance(dm, DiffusionModel):
            raise ParamError(f"{p.model!r} is not a diffusion model the Generate tab can drive")
        if dm.conditioning == "text" and not p.prompt.strip():
            raise ParamError("the prompt is empty; describe one object, e.g. 'a red circle at the top left'")
        scheduler = make_scheduler(p.scheduler, dm.scheduler_config, dm.prediction_type)
        most = scheduler.config.get("original_inference_steps") if p.scheduler == "lcm" else None
        if most is not None and p.steps > most:
            raise SchedulerError(f"LCM on {p.model!r} takes at most {most} steps; got {p.steps}")
        few = dm.info.get("few_step")  # a distilled model knows only its own timesteps
        if few and len(few) % p.steps:
            counts = ", ".join(str(n) for n in range(1, len(few) + 1) if len(few) % n == 0)
            raise SchedulerError(f"{p.model!r} is a {len(few)}-step model (timesteps {few}); use {counts} steps")
        cond, uncond = _conditions(dm, p, manager, p.n_images)
        denoise = G.bind(dm.model_fn, {}) if cond is None else G.guided(dm.model_fn, cond, uncond, p.guidance)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(p.n_images)]
        for item in sample_images(dm, denoise, scheduler, seeds, num_inference_steps=p.steps,
                                  teleport_to=teleport_plan(dm, p.teleport, p.steps),
                                  preview_every=p.preview_every):
            if isinstance(item, Progress):
                yield item
            else:
                x = item
    upscale = max(1, DISPLAY_SIZE // x.shape[-1])
    parameters = {"method": "generate", **asdict(p), "seed": seed, "randomize_seed": False,
                  "precision": dm.precision, "studio_version": __version__}
    if dm.conditioning != "text":
        parameters.pop("prompt")
    if dm.conditioning != "class":
        parameters.pop("digit")
    yield ImageResult(images=to_pil(x, upscale), parameters=parameters, seeds=seeds, tensors=x,
                      seconds=time.perf_counter() - t0)

