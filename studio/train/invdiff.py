"""Recipes of the Debias tab (InvDiff, Hou et al., KDD 2025; official ``Hundredl/InvDiff``).

``studio train shapes-biased``: the biased base model eps_b. As the official step 0 fine-tunes
Stable Diffusion on the biased dataset with the plain loss, this fine-tunes the shipped
``shapes-t2i`` (its objective, sampler and text encoder kept) on the fixed biased training set of
:mod:`studio.data.biased_shapes` (most circles red, most squares blue, most captions without a
colour), 10% of the captions emptied for classifier-free guidance as in the base recipe.

``studio train invdiff-shapes``: the two InvDiff steps on eps_b (:mod:`studio.core.invdiff`).

1. MAX: one pass over the training set, one random timestep and noise per image
   (:func:`sample_losses`), then :func:`~studio.core.invdiff.infer_groups` with the shipped
   script's G = 8, alpha = 3 (``t_g8_w3``).
2. MIN (:func:`train_delta`): delta is a copy of eps_b with its output convolution zeroed (the
   scripts' ``--delta_type pretrain --delta_init0``), trained through ``r * delta + (1 - r) * eps_b``
   (r = 0.8) on the group loss with lambda = 1, AdamW, gradient norm clipped at 1.

Deviations: CPU-sized steps and batch (:data:`DELTA_STEPS` x 32; official 10,000 x 64 at lr 1e-4
with 1,000 warm-up steps); 10% of the captions emptied as in every studio text recipe (the
official script keeps every caption), so the unconditional branch that classifier-free guidance
reads is trained too; no EMA of delta. The same :func:`train_delta` trains the benchmark's rows
on the same path: the oracle (hard groups from the true attribute), group reweighting (lambda 0)
and plain fine-tuning of delta (one group: the invariant term off).
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from studio.core import invdiff as I
from studio.core.conditioning import zoo_text_kwargs
from studio.core.loading import ZOO_DIR, load_zoo
from studio.data import biased_shapes as B
from studio.data import shapes
from studio.train import diffusion
from studio.train.common import RUNS_DIR, Checkpoint, machine_description, write_manifest_entry

BIASED_STEPS = 800
BIASED_LR = 3e-4
GROUPS, ALPHA, LAMBDA, RATIO = 8, 3.0, 1.0, 0.8  # the shipped script: t_g8_w3, lambda_value 1, delta_ratio 0.8
GROUPER_TARGET = "latents"  # the official code's; bench_debias.py measures both
DELTA_STEPS, DELTA_LR, DELTA_BATCH = 600, 3e-4, 32


class ShapesBiasedRecipe(diffusion.ShapesFineTune):
    """``shapes-biased``: ``shapes-t2i`` fine-tuned on :func:`biased_shapes.training_set`, batches drawn
    with replacement from the fixed set (the set's own caption per image; 10% emptied)."""

    def __init__(self, steps: int = BIASED_STEPS):
        super().__init__("shapes-biased", steps, lr=BIASED_LR, domain="shapes-biased",
                         bias={"share": B.BIAS, "majority": B.MAJORITY, "minority": B.MINORITY,
                               "n_train": B.N_TRAIN, "seed": B.SEED, "shape_only": B.SHAPE_ONLY,
                               "no_colour": B.NO_COLOUR, "prompts": list(B.PROMPTS)})
        # the sampler its Debias figures were measured with (shapes-t2i's own moved to UniPC 8 in issue 29)
        self.info.update(default_scheduler="dpm++", default_steps=15)
        self.data = B.training_set()

    def batch(self, rng: np.random.Generator):
        idx = rng.integers(len(self.data), size=self.batch_size)
        caps = ["" if rng.random() < diffusion.COND_DROPOUT else self.data.captions[i] for i in idx]
        return shapes.to_model_range(self.data.images[idx]), self.encode(caps)


def caption_conditions(captions) -> dict[str, torch.Tensor]:
    """The shapes UNet's keyword tensors for each caption (each distinct caption encoded once)."""
    from studio.data import text

    unique = sorted(set(captions))
    emb = zoo_text_kwargs(text.encode(text.load_text_encoder(), unique, max_tokens=diffusion.JOINED_MAX_TOKENS))
    index = torch.tensor([unique.index(c) for c in captions])
    return {k: v[index] for k, v in emb.items()}


def _noised(dm, sched, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, training target) for one random timestep and noise per image."""
    t = torch.randint(sched.config.num_train_timesteps, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    target = sched.get_velocity(x0, noise, t) if dm.prediction_type == "v_prediction" else noise
    return sched.add_noise(x0, noise, t), t, target


@torch.no_grad()
def sample_losses(dm, data: B.BiasedSet, seed: int = 0, batch: int = 100) -> dict[str, np.ndarray]:
    """MAX's input: eps_b's loss on each training image at one random timestep (official:
    ``generate_train_text_to_image.py``): against the clean image ("latents", as the official
    grouper reads it) and against the training target ("targets")."""
    from diffusers import DDPMScheduler

    sched, g = DDPMScheduler.from_config(dm.scheduler_config), torch.Generator().manual_seed(seed)
    cond = caption_conditions(data.captions)
    out = {k: [] for k in I.GROUPER_TARGETS}
    for i in tqdm(range(0, len(data), batch), desc="per-sample losses", leave=False):
        x0 = shapes.to_model_range(data.images[i:i + batch])
        x_t, t, target = _noised(dm, sched, x0, g)
        pred = dm.model_fn(x_t, t, {k: v[i:i + batch] for k, v in cond.items()})
        out["latents"].append(I.per_sample_mse(pred, x0))
        out["targets"].append(I.per_sample_mse(pred, target))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def train_delta(dm, data: B.BiasedSet, weights: torch.Tensor, lam: float = LAMBDA, r: float = RATIO,
                steps: int = DELTA_STEPS, run: str = "invdiff-shapes", seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """MIN: delta trained through ``mix(eps_b, delta, r)`` on the group loss with soft ``weights`` (n, G).
    Resumable from ``runs/<run>`` (checkpoints every 100 steps)."""
    from diffusers import DDPMScheduler

    base = dm.unet.eval().requires_grad_(False)
    delta = copy.deepcopy(base).train().requires_grad_(True)
    torch.nn.init.zeros_(delta.conv_out.weight)
    torch.nn.init.zeros_(delta.conv_out.bias)
    opt = torch.optim.AdamW(delta.parameters(), lr=DELTA_LR, weight_decay=1e-2)
    ckpt, step, seconds, log = Checkpoint(run), 0, 0.0, []
    if ckpt.exists():
        state = ckpt.load({"delta": delta}, opt)
        step, seconds, log = state["step"], state["seconds"], state.get("log", [])
    sched = DDPMScheduler.from_config(dm.scheduler_config)
    cond = caption_conditions(list(data.captions) + [""])
    empty = {k: v[-1:] for k, v in cond.items()}
    rng = np.random.default_rng(seed * 1000 + step)
    g = torch.Generator().manual_seed(seed * 1000 + step)
    t0 = time.time() - seconds
    bar = tqdm(total=steps, initial=step, desc=f"InvDiff delta ({run})", leave=False)
    while step < steps:
        idx = rng.integers(len(data), size=DELTA_BATCH)
        drop = torch.from_numpy(rng.random(DELTA_BATCH) < diffusion.COND_DROPOUT)
        c = {k: torch.where(drop.view(-1, *[1] * (v.ndim - 1)), empty[k], v[idx]) for k, v in cond.items()}
        x0 = shapes.to_model_range(data.images[idx])
        x_t, t, target = _noised(dm, sched, x0, g)
        pred = I.mix(base(x_t, t, **c).sample, delta(x_t, t, **c).sample, r)
        loss, parts = I.group_loss(I.per_sample_mse(pred, target), weights[idx], lam)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(delta.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        log.append({"step": step, "loss": float(loss), **parts})
        if step % 100 == 0 or step == steps:
            ckpt.save(step, time.time() - t0, {"delta": delta}, opt, {"log": log})
    bar.close()
    return delta.eval().requires_grad_(False), {"steps": step, "seconds": round(time.time() - t0, 1),
                                                 "final_loss": log[-1]["loss"] if log else None}


def groups_for(dm, data: B.BiasedSet, target: str = GROUPER_TARGET, groups: int = GROUPS, alpha: float = ALPHA,
               run: str = "invdiff-shapes") -> dict:
    """MAX, cached under ``runs/<run>/groups.safetensors``: per-sample losses and the soft groups."""
    from safetensors.torch import load_file

    path = RUNS_DIR / run / f"groups-{target}-g{groups}-w{alpha:g}.safetensors"
    if path.exists():
        return load_file(path)
    losses = sample_losses(dm, data)
    out = {f"loss_{k}": torch.from_numpy(v) for k, v in losses.items()}
    out["weights"] = I.infer_groups(losses[target], groups, alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, path)
    return out


def train_invdiff(seed: int = 0, steps: int | None = None, zoo=ZOO_DIR) -> dict:
    """``invdiff-shapes``: MAX on ``shapes-biased``, then MIN; exported with the groups it used."""
    t0 = time.time()
    dm, data = load_zoo("shapes-biased", zoo), B.training_set()
    grouped = groups_for(dm, data)
    delta, report = train_delta(dm, data, grouped["weights"], steps=steps or DELTA_STEPS, seed=seed)
    folder, tmp = zoo / "invdiff-shapes", zoo / ".invdiff-shapes.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(delta).to(torch.float16).save_pretrained(tmp / "delta", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in grouped.items()}, tmp / "groups.safetensors")
    purity = I.purity(grouped["weights"], data.true_groups)
    info = {"kind": "invdiff", "base": "shapes-biased", "ratio": RATIO, "groups": GROUPS, "alpha": ALPHA,
            "lambda": LAMBDA, "grouper_target": GROUPER_TARGET, "steps": report["steps"], "batch": DELTA_BATCH,
            "lr": DELTA_LR, "group_purity": purity["purity"], "group_nmi": purity["nmi"]}
    (tmp / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    write_manifest_entry("invdiff-shapes", {
        "recipe": "studio train invdiff-shapes", "kind": "invdiff", "machine": machine_description(),
        "train_seconds": round(time.time() - t0, 1), "delta_seconds": report["seconds"],
        "final_loss": report["final_loss"], "params": sum(p.numel() for p in delta.parameters()),
        "quality": {"group_purity": purity["purity"], "group_nmi": purity["nmi"]}}, zoo)
    return record_bias(zoo)


def record_bias(zoo=ZOO_DIR) -> dict:
    """The exported module's bias (:func:`measure_bias` at the shipped ratio, the same seeds as
    ``shapes-biased``'s MANIFEST figure), added to its MANIFEST quality."""
    from studio.core.loading import read_manifest

    bias = measure_bias(load_zoo("shapes-biased", zoo), load_zoo("judge-shapes", zoo),
                        delta=load_zoo("invdiff-shapes", zoo).delta, r=RATIO)
    quality = read_manifest(zoo)["invdiff-shapes"]["quality"]
    return write_manifest_entry("invdiff-shapes", {"quality": {**quality, "bias": bias}}, zoo)


MEASURE_N, MEASURE_SEED = 64, 90_000  # images per prompt for the MANIFEST's bias figure, their noise seeds


@torch.no_grad()
def measure_bias(dm, judge, n: int = MEASURE_N, seed: int = MEASURE_SEED, delta=None, r: float = RATIO,
                 prompts=B.PROMPTS) -> dict:
    """Per prompt ("a circle", "a square"): the colours the shapes judge reads on ``n`` images (the
    model's default sampler and guidance; image i uses noise seed ``seed + i``), the bias score over
    red / blue, and the share of images holding the asked shape. With ``delta``: InvDiff's mix at ``r``."""
    from studio.core.sampling import run_to_end

    scale = float(dm.info.get("default_guidance", 2.0))
    name, steps = dm.info.get("default_scheduler", "dpm++"), int(dm.info.get("default_steps", 15))
    out = {}
    for prompt in prompts:
        cond = caption_conditions([prompt] * n + [""] * n)
        c, u = {k: v[:n] for k, v in cond.items()}, {k: v[n:] for k, v in cond.items()}
        x = run_to_end(I.sample(dm, delta, r, c, u, [seed + i for i in range(n)], guidance=scale, scheduler=name,
                                steps=steps))
        read = I.colour_readout(judge, x, prompt.split()[-1], B.PROMPT_COLOURS)
        found = read["n"] - read["missing"]
        out[prompt] = {"counts": {col: read["counts"][col] for col in B.PROMPT_COLOURS},
                       "other_colours": found - sum(read["counts"][col] for col in B.PROMPT_COLOURS),
                       "shape_found": found / n, "bias_score": read["bias_score"]}
    scores = [v["bias_score"] for v in out.values() if v["bias_score"] is not None]
    return {"prompts": out, "bias_score": float(np.mean(scores)) if scores else None, "n": n, "seed": seed,
            "sampler": f"{name}, {steps} steps, guidance {scale}", **({"ratio": r} if delta is not None else {})}


def train(name: str, seed: int = 0, steps: int | None = None, minutes: float | None = None,
          resume_from_zoo: bool = False) -> dict:
    """Train the zoo entry ``name`` of the Debias tab and export it."""
    if name == "shapes-biased":
        recipe = ShapesBiasedRecipe(**({"steps": steps} if steps else {}))
        result = diffusion.train(recipe, seed=seed, minutes=minutes, resume_from_zoo=resume_from_zoo)
        if recipe.exportable and result.get("step", 0) >= recipe.steps:  # the bias it learnt, measured
            bias = {m: measure_bias(load_zoo(m), load_zoo("judge-shapes")) for m in ("shapes-t2i", "shapes-biased")}
            write_manifest_entry("shapes-biased", {"quality": {"bias": bias["shapes-biased"],
                                                               "before_fine_tune": bias["shapes-t2i"]}})
        return result
    if name == "invdiff-shapes":
        return train_invdiff(seed=seed, steps=steps)
    raise ValueError(f"unknown Debias recipe {name!r}")

