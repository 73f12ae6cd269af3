"""Resolution: one sample rendered at any size (DDMI, Park et al., ICLR 2024; official ``mlvlab/DDMI``).

The model is ``ddmi-shapes`` (:mod:`studio.train.ddmi`): a latent diffusion model whose latents decode,
through the D2C-VAE, to feature planes at three resolutions and one MLP that turns any coordinate into
a colour (:mod:`studio.nets.inr`). A sample is therefore a *function*: :func:`run` draws one latent
(from a prompt, or by encoding a known scene) and renders it at 32, 64, 128 and 256 pixels beside
bicubic upsampling of its own 32-pixel render. With a known scene (``source="scene"``), the shapes
world's true render at each size is shown too, and each size is measured against it (:func:`readout`):

* PSNR (dB) to the true render;
* colour-mask IoU: each pixel takes its nearest palette colour; the IoU of each object colour's pixels
  with the truth's, averaged over the colours the truth holds;
* edge sharpness: the mean gradient magnitude over the truth's edge pixels, divided by the truth's (1:
  as steep as the true render; a blur is below 1).

With or without a truth, the shapes judge reads each render after area-downsampling it to 32 pixels:
the same reading at every size is the consistency a resolution-free sample should have.

Deviations (docs/resolution.md): see :mod:`studio.train.ddmi` (a CPU-sized D2C-VAE, no LPIPS, the latent
model conditioned on a caption as ``shapes-t2i`` is).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

import numpy as np

from studio import __version__, lazy
from studio.core import guidance as G
from studio.core.conditioning import repeat, text_conditions
from studio.core.device import MAX_SEED, make_generator
from studio.core.metrics import colour_mask_iou, edge_sharpness, psnr, shapes_objects
from studio.core.params import ParamError, spec, validate
from studio.core.results import to_pil
from studio.core.sampling import Progress, make_scheduler, sample
from studio.data import shapes
from studio.data.text import MAX_PROMPT_CHARS
from studio.methods import method

torch = lazy.load("torch")
F = lazy.load("torch.nn.functional")

MODEL = "ddmi-shapes"
JUDGE = "judge-shapes"
SIZES = (32, 64, 128, 256)
TILE = 256  # display size of every tile (nearest-neighbour, so a tile shows its render's own pixels)
Zoom = Literal["off", "object", "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
               "bottom right"]


@dataclass
class Params:
    model: str = field(default=MODEL, metadata=spec("Model", "A DDMI model (latents that decode to functions)."))
    source: Literal["scene", "generate"] = field(default="scene", metadata=spec(
        "Source", "scene: encode a shapes scene drawn from the seed, whose true render exists at every size (the "
        "renders are measured against it); generate: sample a latent for the prompt (no truth to compare with)."))
    prompt: str = field(default="a red circle at the top left", metadata=spec(
        "Prompt", "For 'generate': one object, e.g. 'a blue square at the bottom right'.", max_chars=MAX_PROMPT_CHARS))
    seed: int = field(default=0, metadata=spec("Seed", "The scene (scene) or the noise (generate).", minimum=0,
                                               maximum=MAX_SEED, step=1))
    max_size: Literal[64, 128, 256] = field(default=256, metadata=spec(
        "Largest render", "Render at 32, 64, ... up to this many pixels a side."))
    zoom: Zoom = field(default="off", metadata=spec(
        "Zoom", "Show one cell of the 3 x 3 grid at every size ('object': the cell of the scene's first object or "
        "the prompt's region)."))
    guidance: float = field(default=4.0, metadata=spec(  # ddmi-shapes' own, chosen on the selection prompts
        "Guidance", "Classifier-free scale for 'generate' (ddmi-shapes' default, chosen on the selection prompts).",
        minimum=0.0, maximum=10.0, step=0.25, advanced=True))
    steps: int = field(default=50, metadata=spec("Steps", "DDIM steps for 'generate' (the paper's 50, eta 0).",
                                                 minimum=2, maximum=200, step=1, advanced=True))


@dataclass
class ResolutionResult:
    images: list                  # PIL tiles, row-major: len(rows) rows of len(sizes) tiles, each TILE x TILE
    captions: list[str]           # one per tile
    rows: list[str]               # the row labels ("DDMI", "bicubic of its 32 px render", ...)
    sizes: list[int]
    renders: dict[str, dict[int, torch.Tensor]]  # row label -> size -> (1, 3, s, s) in [-1, 1]
    table: list[dict]             # one row per (row label, size): the measurements
    parameters: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    def png(self, label: str, size: int) -> bytes:
        """The render ``label`` at ``size`` as PNG with the parameters in its text chunk."""
        from studio.core.results import png_bytes

        return png_bytes(to_pil(self.renders[label][size])[0], {**self.parameters, "render": label, "size": size})


def render_sizes(max_size: int) -> list[int]:
    return [s for s in SIZES if s <= max_size]


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling (PyTorch's, a = -0.75, as PIL's) of (B, 3, h, w) to ``size``, clipped to [-1, 1]."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def true_render(scene: shapes.Scene, size: int) -> torch.Tensor:
    """The procedural render of ``scene`` at ``size`` x ``size``: (1, 3, size, size) in [-1, 1]."""
    return shapes.render_tensor(scene, size)


def to_32(x: torch.Tensor) -> torch.Tensor:
    """Area-downsample a render to the judge's 32 x 32."""
    return x if x.shape[-1] == shapes.IMAGE_SIZE else F.interpolate(x, size=(shapes.IMAGE_SIZE,) * 2, mode="area")


def readout(x: torch.Tensor, truth: torch.Tensor | None) -> dict:
    """PSNR, colour-mask IoU and edge sharpness of ``x`` (B, 3, s, s) against ``truth`` (per image, as arrays)."""
    if truth is None:
        return {}
    return {"psnr": psnr(x, truth).numpy(), "colour_iou": colour_mask_iou(x, truth).numpy(),
            "edge_sharpness": edge_sharpness(x, truth).numpy()}


def judge_words(judge, x: torch.Tensor) -> list[str]:
    """What the shapes judge reads on each render (area-downsampled to 32 px): its objects, or 'nothing'."""
    return ["; ".join(found) or "nothing" for found in shapes_objects(judge, to_32(x))]


def zoom_box(zoom: str, scene: shapes.Scene | None, prompt: str) -> int | None:
    """The region index to zoom on, or None."""
    if zoom == "off":
        return None
    if zoom == "object":
        if scene is not None:
            return scene.objects[0].region
        concept = shapes.parse_concept(prompt) or {}
        return concept.get("region") if concept.get("region") is not None else 4
    return shapes.REGIONS.index(zoom)


def crop_region(x: torch.Tensor, region: int | None) -> torch.Tensor:
    if region is None:
        return x
    s = x.shape[-1]
    row, col = divmod(region, 3)
    lo_r, hi_r = round(row * s / 3), round((row + 1) * s / 3)
    lo_c, hi_c = round(col * s / 3), round((col + 1) * s / 3)
    return x[..., lo_r:hi_r, lo_c:hi_c]


def tile(x: torch.Tensor, region: int | None):
    """A render (1, 3, s, s) as a TILE x TILE PIL image (nearest: its own pixels stay visible), zoomed on ``region``."""
    from PIL import Image

    return to_pil(crop_region(x, region))[0].resize((TILE, TILE), Image.Resampling.NEAREST)


def check(p: Params, manager) -> None:
    validate(p)
    models = method("resolution").models(manager)
    if p.model not in models:
        raise ParamError(f"unknown DDMI model {p.model!r}; choose one of {', '.join(models) or '(none registered)'}")
    if p.source == "generate" and not p.prompt.strip():
        raise ParamError("the prompt is empty; describe one object, e.g. 'a red circle at the top left'")


def sample_latents(dm, manager, prompt: str, seeds: list[int], guidance: float, steps: int
                   ) -> Iterator[Progress | torch.Tensor]:
    """DDIM (eta 0) latents for ``prompt``, latent i from ``seeds[i]``, with classifier-free guidance;
    yields a Progress per step, then the latents (B, C, h, w)."""
    n = len(seeds)
    if dm.conditioning == "text":
        cond, uncond = (repeat(c, n) for c in text_conditions(dm, manager, [prompt, ""]))
        denoise = G.guided(dm.model_fn, cond, uncond, guidance)
    else:
        denoise = G.bind(dm.model_fn, {})
    scheduler = make_scheduler("ddim", dm.scheduler_config, dm.prediction_type)
    generator = [make_generator(s) for s in seeds]
    with torch.no_grad():
        yield from sample(denoise, scheduler, (n, *dm.sample_shape), num_inference_steps=steps, generator=generator,
                          prediction_type=dm.prediction_type, device=next(dm.unet.parameters()).device)


def run(p: Params, manager) -> Iterator[Progress | ResolutionResult]:
    """Yield Progress while sampling (generate), then one :class:`ResolutionResult`."""
    check(p, manager)
    t0 = time.perf_counter()
    sizes = render_sizes(p.max_size)
    scene = None
    with manager.use(p.model) as dm:
        if p.source == "scene":
            scene = shapes.random_scene(np.random.default_rng(p.seed))
            z = dm.encode(true_render(scene, shapes.IMAGE_SIZE))
            yield Progress(step=1, total=1, timestep=0.0, preview=None)
        else:
            for item in sample_latents(dm, manager, p.prompt, [p.seed], p.guidance, p.steps):
                if isinstance(item, Progress):
                    yield item
                else:
                    z = item
        ddmi = {s: dm.render(z, s).cpu() for s in sizes}
    renders = {"DDMI": ddmi, "bicubic of its 32 px render": {s: bicubic(ddmi[32], s) for s in sizes}}
    if scene is not None:
        truth = {s: true_render(scene, s) for s in sizes}
        renders["bicubic of the true 32 px render"] = {s: bicubic(truth[32], s) for s in sizes}
        renders["true render"] = truth
    region = zoom_box(p.zoom, scene, p.prompt)
    table, judge_reads = [], {}
    judged = JUDGE in manager.keys()
    with (manager.use(JUDGE) if judged else nullcontext()) as judge:
        for label, row in renders.items():
            for s in sizes:
                entry = {"render": label, "size": s}
                if judge is not None:
                    entry["judge reads (at 32 px)"] = judge_reads[(label, s)] = judge_words(judge, row[s])[0]
                if scene is not None and label != "true render":
                    entry.update({k: round(float(v[0]), 3) for k, v in readout(row[s], truth[s]).items()})
                table.append(entry)
    images, captions = [], []
    for label, row in renders.items():
        for s in sizes:
            images.append(tile(row[s], region))
            captions.append(f"{label}, {s} px" + (f": {_short(table, label, s)}" if scene is not None
                                                   and label != "true render" else ""))
    notes = []
    if scene is not None:
        notes.append("Scene: " + "; ".join(o.caption() for o in scene.objects) + ". Measured against its true render "
                     "at each size (the shapes world is procedural).")
    else:
        notes.append("Generated: no true render exists, so only the judge's readings (after area-downsampling each "
                     "render to 32 px) are compared across sizes.")
    if judged and "DDMI" in renders:
        same = sum(judge_reads[("DDMI", s)] == judge_reads[("DDMI", 32)] for s in sizes)
        notes.append(f"The judge reads the DDMI render the same at {same} of {len(sizes)} sizes.")
    parameters = {"method": "resolution", **asdict(p), "sizes": sizes, "studio_version": __version__}
    if p.source == "scene":
        for k in ("prompt", "guidance", "steps"):
            parameters.pop(k)
    yield ResolutionResult(images=images, captions=captions, rows=list(renders), sizes=sizes, renders=renders,
                           table=table, parameters=parameters, seconds=time.perf_counter() - t0, notes=notes)


def _short(table: list[dict], label: str, size: int) -> str:
    row = next(r for r in table if r["render"] == label and r["size"] == size)
    return f"PSNR {row['psnr']:.1f} dB, IoU {row['colour_iou']:.2f}, sharpness {row['edge_sharpness']:.2f}"
