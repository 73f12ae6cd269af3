"""``studio train ddmi-shapes``: DDMI on the shapes world (Park et al., ICLR 2024; ``mlvlab/DDMI``).

Two stages, each resumable from ``runs/`` (and, with ``--resume-from-zoo``, from the shipped weights):

1. **D2C-VAE** (:class:`studio.nets.inr.D2CVAE`, ``runs/ddmi-shapes-vae``): the official multi-scale
   training (``multiscale_image_transform``): the encoder always sees the 32 x 32 render; the target is,
   with p = 0.3, that render (si = 1), with p = 0.3 a 32 x 32 crop of the scene rendered at 48 x 48
   (si = 1 / 1.5), with p = 0.4 a crop of a 64 x 64 render (si = 1 / 2), each with its crop's
   coordinates. The shapes world is procedural, so these are true renders, not resized images. Loss
   as the official ``tools/d2c_vae/image.py``: the L1 error and the KL both *summed* over dimensions
   and averaged over the batch, beta_KL annealed linearly from 1e-4 over the first 90% of steps, to 0.02
   (the official 0.5 collapsed the posterior here: :data:`KL_END`). LPIPS is not used (no VGG weights offline): a summed L1 on the horizontal and vertical
   pixel differences (an edge term, weight 1) stands in for its push toward sharp edges. The
   spectral-norm regulariser is left out (the official code adds it against NaNs in a deep NVAE-style
   net; these small nets trained without). AdamW with the official betas (0.9, 0.99), a CPU-sized lr
   (1e-3, 100 warm-up steps, cosine to 1e-5) and batch (16). The ablations of the Resolution
   benchmark are variants of this stage (:data:`VAE_VARIANTS`), kept in ``runs/``, never exported.
2. **Latent DDPM** (``runs/ddmi-shapes``): a diffusers ``UNet2DConditionModel`` on the 8 x 8 x 8
   posterior *samples* (as the official stage 2 encodes), 1000 steps, the LDM linear betas (sqrt beta
   linear from 0.0015 to 0.0195, diffusers' ``scaled_linear``), epsilon-prediction, L2, EMA, run by
   :func:`studio.train.diffusion.train`. Deviations: it is conditioned on a caption exactly as
   ``shapes-t2i`` is (MiniLM tokens + pooled embedding), so that judge accuracy measures it beside
   that model (the paper's image models are unconditional); no LSGM mixed prediction (plain epsilon).

The entry holds ``vae/`` and ``model/`` (fp16), ``scheduler/`` and ``studio.json``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.core.loading import ZOO_DIR
from studio.data import shapes
from studio.nets.inr import D2CVAE, pixel_grid
from studio.train.common import (Checkpoint, LossLog, StepLog, Timer, machine_description, make_accelerator,
                                 optimizer_step, process_entropy, record_zoo_quality, write_manifest_entry)

NAME = "ddmi-shapes"
SEED = 2024
VAE_STEPS, VAE_BATCH, VAE_LR, VAE_MIN_LR, VAE_WARMUP = 2500, 16, 1e-3, 1e-5, 100
VAE_BETAS = (0.9, 0.99)
# beta_KL: linear from KL_START to KL_END over the first 90% of steps. The official end is 0.5; here it collapsed
# the posterior (the fine-plane ablation's KL fell to 2 nats by step 450, at beta 0.1, its L1 stuck near 330; the
# method's was falling too), so the ramp ends at 0.02.
KL_START, KL_END, KL_RAMP = 1e-4, 0.02, 0.9
EDGE_WEIGHT = 1.0  # the summed L1 on pixel differences that stands in for LPIPS
TARGET_SCALES = ((32, 0.3), (48, 0.3), (64, 0.4))  # (render size the 32 x 32 target is cropped from, probability)
CHECK_EVERY = 250
LDM_STEPS, LDM_BATCH, LDM_LR = 5000, 32, 1e-3
# The ablations (Resolution benchmark): each differs from the shipped D2C-VAE in one switch.
VAE_VARIANTS: dict[str, dict] = {
    "": {},
    "fine": {"pe": "fine"},            # one fine plane for every MLP block: no multi-resolution decomposition
    "fourier": {"pe": "fourier"},      # a fixed Fourier PE and a latent-modulated MLP (the fixed-PE family)
    "no-si": {"scale_injection": False},  # si = 1 at every size, in training and rendering
}


def make_vae(variant: str = "") -> D2CVAE:
    if variant not in VAE_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(v for v in VAE_VARIANTS if v)}")
    return D2CVAE(encoder_channels=(16, 32, 64), decoder_channels=(64, 32, 16), mlp_width=48, **VAE_VARIANTS[variant])


def kl_weight(step: int, steps: int) -> float:
    return KL_START + (KL_END - KL_START) * min(1.0, step / (KL_RAMP * steps))


def vae_lr(step: int, steps: int) -> float:
    if step < VAE_WARMUP:
        return VAE_LR * (step + 1) / VAE_WARMUP
    progress = (step - VAE_WARMUP) / max(1, steps - VAE_WARMUP)
    return VAE_MIN_LR + (VAE_LR - VAE_MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress))


def multiscale_batch(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    """``n`` fresh scenes: ``images`` (the encoder's 32 x 32 renders), ``targets`` (32 x 32 crops of renders
    at the drawn scale), their ``coords`` (n, 32, 32, 2) and ``si`` (n,)."""
    size = shapes.IMAGE_SIZE
    scenes = [shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS) for _ in range(n)]
    sizes = rng.choice([s for s, _ in TARGET_SCALES], size=n, p=[p for _, p in TARGET_SCALES])
    images, targets, coords = [], [], []
    for scene, s in zip(scenes, sizes.tolist()):
        image = shapes.render(scene)
        images.append(image)
        if s == size:
            targets.append(image)
            coords.append(pixel_grid(size))
            continue
        ox, oy = (int(v) for v in rng.integers(0, s - size + 1, size=2))
        targets.append(shapes.render(shapes.rescale(scene, s))[oy:oy + size, ox:ox + size])
        coords.append(pixel_grid(s, (ox, oy), size))
    as_tensor = lambda a: shapes.to_model_range(np.stack(a).transpose(0, 3, 1, 2))  # noqa: E731
    return {"images": as_tensor(images), "targets": as_tensor(targets), "coords": torch.stack(coords),
            "si": torch.tensor(size / sizes, dtype=torch.float32)}


def edge_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed L1 between horizontal and vertical pixel differences, averaged over the batch."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return ((dx(pred) - dx(target)).abs().sum() + (dy(pred) - dy(target)).abs().sum()) / pred.shape[0]


def vae_loss(vae: D2CVAE, batch: dict, beta: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    posterior = vae.encode(batch["images"])
    si = batch["si"] if vae.config.scale_injection else torch.ones_like(batch["si"])
    pred = vae.query(posterior.sample(generator), batch["coords"], si)
    n = pred.shape[0]
    terms = {"l1": (pred - batch["targets"]).abs().sum() / n, "edge": edge_l1(pred, batch["targets"]),
             "kl": posterior.kl().sum() / n}
    terms["loss"] = terms["l1"] + EDGE_WEIGHT * terms["edge"] + beta * terms["kl"]
    return terms


def vae_run(variant: str = "") -> str:
    return f"{NAME}-vae" + (f"-{variant}" if variant else "")


def train_vae(variant: str = "", seed: int = SEED, steps: int = VAE_STEPS, resume_from_zoo: bool = False,
              deadline: float | None = None) -> tuple[D2CVAE, dict]:
    """Stage 1 (or one ablation of it), resumable from ``runs/ddmi-shapes-vae[-variant]``."""
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    vae = make_vae(variant)
    opt = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, betas=VAE_BETAS)
    ckpt = Checkpoint(vae_run(variant))
    start, timer = 0, Timer()
    if ckpt.exists():
        state = ckpt.load({"model": vae}, opt)
        start, timer = state["step"], Timer(state["seconds"])
    elif resume_from_zoo and not variant and (ZOO_DIR / NAME).exists():
        from studio.core.loading import load_zoo, read_manifest

        vae.load_state_dict(load_zoo(NAME).vae.float().state_dict())
        start = steps  # the shipped VAE is finished: stage 2 reads it as it is
        timer = Timer(float(read_manifest()[NAME].get("vae_seconds", 0.0)))
    model, opt = accelerator.prepare(vae, opt)
    steplog, log = StepLog(accelerator, ckpt.dir.name, start=start), LossLog()
    bar = tqdm(range(start, steps), desc=vae_run(variant), initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = vae_lr(step, steps)
        rng = np.random.default_rng(process_entropy(accelerator, seed, step))
        batch = multiscale_batch(rng, VAE_BATCH)
        terms = vae_loss(vae, batch, kl_weight(step, steps), torch.Generator().manual_seed(int(rng.integers(2**31))))
        optimizer_step(terms["loss"], opt, clip=1.0, log=log, accelerator=accelerator)
        steplog.write(step + 1, terms, beta=round(kl_weight(step, steps), 5))
        if (step + 1) % 25 == 0:
            bar.set_postfix(l1=f"{terms['l1'].item():.1f}", kl=f"{terms['kl'].item():.1f}")
        out_of_time = deadline is not None and time.time() > deadline
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps or out_of_time:
            ckpt.save(step + 1, timer.seconds, {"model": vae}, opt, {"loss": log.mean(CHECK_EVERY), "variant": variant})
        if out_of_time:
            break
    state = json.loads(ckpt.meta_path.read_text()) if ckpt.exists() else {"step": start, "seconds": timer.seconds}
    return vae.eval().requires_grad_(False), state


def load_variant(variant: str) -> D2CVAE:
    """A finished stage-1 run from ``runs/`` (the shipped VAE for ``""`` when ``runs/`` lacks it)."""
    ckpt = Checkpoint(vae_run(variant))
    if not variant and not ckpt.exists():
        from studio.core.loading import load_zoo

        return load_zoo(NAME).vae
    if not ckpt.exists():
        raise FileNotFoundError(f"runs/{vae_run(variant)} is missing: run `studio train {NAME} --variant {variant}`")
    vae = make_vae(variant)
    ckpt.load({"model": vae})
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def reconstruction_quality(vae: D2CVAE, n: int = 256, seed: int = 4242) -> dict:
    """PSNR (dB) of 32 x 32 reconstructions (the posterior mean) of fresh renders."""
    from studio.core.metrics import psnr

    x, _ = shapes.make_dataset(n, seed)
    x = shapes.to_model_range(x)
    recon = vae.render(vae.encode(x).mean).clamp(-1, 1)
    return {"psnr_32": round(float(psnr(recon, x).mean()), 2), "renders": n, "seed": seed}


# ----------------------------------------------------------------------------- stage 2

def latent_unet():
    from diffusers import UNet2DConditionModel

    from studio.data.text import EMBED_DIM

    return UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=EMBED_DIM, attention_head_dim=8,
        norm_num_groups=8, class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM,
    )


def ldm_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                         beta_end=0.0195, prediction_type="epsilon", clip_sample=False)


def ldm_recipe(vae: D2CVAE, steps: int = LDM_STEPS):
    from studio.train.diffusion import ShapesRecipe

    class LatentRecipe(ShapesRecipe):
        """The shapes-t2i recipe's scenes and captions, encoded to posterior samples of the frozen VAE."""

        def __init__(self):
            super().__init__(steps=steps)
            self.name, self.make_model, self.batch_size, self.lr = NAME, latent_unet, LDM_BATCH, LDM_LR
            self.prediction_type, self.zero_snr, self.snr_gamma = "epsilon", False, None
            self.info = {"kind": "inr", "domain": "shapes", "conditioning": "text", "prediction_type": "epsilon",
                         "text_encoder": self.info["text_encoder"], "held_out_pairs": self.info["held_out_pairs"],
                         "default_scheduler": "ddim", "default_steps": 50, "default_guidance": 2.0}

        def scheduler(self):
            return ldm_scheduler()

        def batch(self, rng):
            x, cond = super().batch(rng)
            with torch.no_grad():
                z = vae.encode(x).sample(torch.Generator().manual_seed(int(rng.integers(2**31))))
            return z, cond

    return LatentRecipe()


def export(vae: D2CVAE, unet: torch.nn.Module, info: dict, manifest: dict) -> None:
    folder, tmp = ZOO_DIR / NAME, ZOO_DIR / f".{NAME}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy.deepcopy(vae).to(torch.float16).save_pretrained(tmp / "vae", safe_serialization=True)
    copy.deepcopy(unet).to(torch.float16).save_pretrained(tmp / "model", safe_serialization=True)
    ldm_scheduler().save_pretrained(tmp / "scheduler")
    (tmp / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    write_manifest_entry(NAME, manifest)


def train(seed: int = 0, steps: int | None = None, minutes: float | None = None, resume_from_zoo: bool = False,
          variant: str = "") -> dict:
    """Stage 1 then stage 2 (``steps``: stage 2's), export, measure. ``variant``: one ablation of stage 1
    only, kept in ``runs/``."""
    seed = seed or SEED
    deadline = time.time() + 60 * minutes if minutes else None
    vae, vae_state = train_vae(variant, seed, VAE_STEPS, resume_from_zoo, deadline)
    if vae_state["step"] < VAE_STEPS:
        return {"stage": "vae", **vae_state}
    recon = reconstruction_quality(vae)
    if variant:
        return {"stage": "vae", "variant": variant, **vae_state, **recon}
    from studio.train import diffusion

    recipe = ldm_recipe(vae, steps or LDM_STEPS)
    left = None if deadline is None else max(0.0, (deadline - time.time()) / 60)
    result = diffusion.train(recipe, seed=seed, minutes=left, export=False, resume_from_zoo=resume_from_zoo)
    if result["step"] < recipe.steps:
        return {"stage": "latent diffusion", **result}
    ckpt = Checkpoint(recipe.run_name)
    unet = latent_unet()
    ckpt.load({"ema": unet})
    info = {**recipe.info, "model_class": type(unet).__name__, "vae_class": type(vae).__name__,
            "render_sizes": [32, 64, 128, 256]}
    manifest = {"recipe": f"studio train {NAME}", "kind": "inr", "machine": machine_description(), "seed": seed,
                "train_seconds": round(vae_state["seconds"] + result["seconds"], 1),
                "vae_seconds": round(vae_state["seconds"], 1), "vae_steps": VAE_STEPS, "train_steps": result["step"],
                "final_loss": result["loss"], "batch_size": LDM_BATCH,
                "params": sum(p.numel() for p in [*vae.parameters(), *unet.parameters()]),
                "quality": {"vae": recon}}
    export(vae, unet, info, manifest)
    quality = record_quality()
    return {"seconds": round(vae_state["seconds"] + result["seconds"], 1), **recon, "final_loss": result["loss"],
            "at_chosen": quality["at_chosen"]}


def record_quality() -> dict:
    """Measure the exported entry (:func:`studio.evaluate.evaluate_ddmi`: guidance chosen on the SELECTION prompts,
    figures on the REPORT prompts), write the chosen guidance into its studio.json and the figures into its MANIFEST."""
    from studio import evaluate

    return record_zoo_quality(NAME, lambda manager: evaluate.evaluate_ddmi(manager, NAME),
                              lambda quality: {"default_guidance": quality["chosen_guidance"]}, keep="vae")
