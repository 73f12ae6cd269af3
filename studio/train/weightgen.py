"""Recipe ``studio train d2nwg-digits`` / ``pdiff-digits``: a zoo of classifiers, then the generators of their weights.

1. **Classifier zoo** (:func:`train_zoo`): the tiny CNN (:mod:`studio.nets.weightgen`) trained on the
   upright plain digits (the shared *base*, Adam lr 3e-3, batch 64, 600 steps), then fine-tuned from
   the base on every task of :mod:`studio.data.digit_tasks` with :data:`ZOO_SEEDS` seeds (data order
   and a 90% subset of the training images per seed), 300 steps each. One shared base keeps the
   checkpoints in one basin (no permutation symmetry to undo), as model zoos fine-tuned from one
   pretrained model are. Selection and held-out tasks get zoo models too, as the ceiling a generated
   model is compared with; no generator ever trains on them.
2. **p-diff** (:func:`train_pdiff`), in its own paper's setting: for each of :data:`PDIFF_TASKS`, the
   task's first zoo model is trained on for :data:`PDIFF_EPOCHS` more epochs with only the last layer
   free (official: the last BN layers of a ResNet-18), saving the last layer after every epoch (200
   vectors of 1,290 values); the autoencoder with input noise 0.001 and latent noise 0.1 (official
   defaults; the notes' 0.5 is a fork's), then the DDPM on its latents (linear beta 1e-4 to 2e-2,
   1,000 steps, epsilon MSE), AdamW lr 1e-3, weight decay 2e-6.
3. **D2NWG** (:func:`train_d2nwg`) on the seen tasks' zoo models: the weight VAE (L1 + 1000 MSE +
   1e-6 KL, the official loss weights), the dataset encoder aligned with the VAE's latent means by the
   symmetric contrastive loss (temperature 1, soft targets; a fresh 5-per-class set each step), then
   the conditional latent diffusion (scaled-linear beta 0.0015 to 0.0155, 1,024 steps, epsilon MSE,
   latents scaled to unit variance as ``scale_by_std``) with the frozen encoder.

Every stage writes its result under ``runs/weightgen/`` and is skipped when that exists, so a stopped
run loses at most one stage; ``--steps`` scales every stage (a quick check).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from studio.core import weightgen as G
from studio.core.loading import ZOO_DIR, load_zoo
from studio.data import digit_tasks
from studio.nets import weightgen as W
from studio.train.common import RUNS_DIR, machine_description, write_manifest_entry

ZOO_SEEDS = 5
BASE_STEPS, TASK_STEPS, LR, BATCH = 600, 300, 3e-3, 64
PDIFF_TASKS = ("rot0-plain-clean", "rot90-thick-clean", "rot180-thin-noisy")
PDIFF_EPOCHS, PDIFF_AE_STEPS, PDIFF_DDPM_STEPS = 200, 3000, 3000
VAE_STEPS, CLIP_STEPS, LDM_STEPS = 2000, 1500, 3000
PDIFF_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2,
                   "prediction_type": "epsilon", "clip_sample": True}
D2NWG_SCHEDULER = {"num_train_timesteps": 1024, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
                   "beta_end": 0.0155, "prediction_type": "epsilon", "clip_sample": False}
RUN = RUNS_DIR / "weightgen"


def _cached(name: str, make, run: Path) -> dict[str, torch.Tensor]:
    path = run / f"{name}.safetensors"
    if path.exists():
        return load_file(path)
    out = make()
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    return out


def fit(theta: torch.Tensor, x, y, steps: int, seed: int, lr: float = LR) -> torch.Tensor:
    """Adam on cross-entropy from ``theta``, batches of :data:`BATCH` drawn by ``seed``."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (BATCH,), generator=g)
        loss = F.cross_entropy(W.logits(theta, x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def train_zoo(scale: float = 1.0, run: Path = RUN) -> dict[str, torch.Tensor]:
    """The classifier zoo: {"base": (P,), "checkpoints": (T * seeds, P), "accuracy": (T * seeds,)} in
    :data:`digit_tasks.ALL` order, seeds inner."""
    def make():
        up = digit_tasks.data("rot0-plain-clean", "train")
        base = fit(W.init_vector(torch.Generator().manual_seed(0)), up.images, up.labels, int(BASE_STEPS * scale), 0)
        rows, acc = [], []
        for ti, t in enumerate(tqdm(digit_tasks.ALL, desc="classifier zoo")):
            tr, te = digit_tasks.data(t.id, "train"), digit_tasks.data(t.id, "test")
            for s in range(ZOO_SEEDS):
                keep = np.random.default_rng(1000 * ti + s).permutation(len(tr.labels))[: int(0.9 * len(tr.labels))]
                theta = fit(base, tr.images[keep], tr.labels[keep], int(TASK_STEPS * scale), seed=1000 * ti + s)
                rows.append(theta)
                acc.append(float(G.accuracy(theta[None], te.images, te.labels)[0]))
        return {"base": base, "checkpoints": torch.stack(rows), "accuracy": torch.tensor(acc)}
    return _cached("zoo", make, run)


def zoo_tasks() -> list[str]:
    """The task id of each zoo checkpoint, in :func:`train_zoo`'s order."""
    return [t.id for t in digit_tasks.ALL for _ in range(ZOO_SEEDS)]


def _adamw(params, lr=1e-3):
    return torch.optim.AdamW(params, lr=lr, weight_decay=2e-6)


def _ddpm_steps(net, data: torch.Tensor, sched_config: dict, steps: int, seed: int, cond=None, batch: int = 50):
    """Epsilon-MSE DDPM training of ``net(z_t, t[, cond(idx)])`` on ``data`` (N, ...)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**sched_config)
    opt = _adamw(net.parameters())
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="latent diffusion", leave=False):
        idx = torch.randint(len(data), (batch,), generator=g)
        z0 = data[idx]
        t = torch.randint(sched.config.num_train_timesteps, (batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        z_t = sched.add_noise(z0, eps, t)
        pred = net(z_t, t) if cond is None else net(z_t, t, cond(idx, g))
        loss = F.mse_loss(pred, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def pdiff_checkpoints(zoo: dict, task_id: str, epochs: int = PDIFF_EPOCHS) -> torch.Tensor:
    """p-diff's data: the last layer after each of ``epochs`` more epochs of the task's first zoo model
    (SGD lr 0.01, momentum 0.9, batch 64, one pass over the training images per epoch), (epochs, P)."""
    start = zoo["checkpoints"][zoo_tasks().index(task_id)]
    tr = digit_tasks.data(task_id, "train")
    x, y = torch.from_numpy(tr.images), torch.from_numpy(tr.labels)
    with torch.no_grad():  # the frozen layers' features, once
        p = W.unflatten(start)
        h = F.relu(F.conv2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], stride=2, padding=1)),
                            p["conv2.weight"], p["conv2.bias"], stride=2, padding=1)).flatten(1)
    head = torch.nn.Linear(128, 10)
    head.weight.data, head.bias.data = p["fc.weight"].clone(), p["fc.bias"].clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            loss = F.cross_entropy(head(h[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        theta = start.clone()
        theta[W.HEAD] = torch.cat([head.weight.detach().flatten(), head.bias.detach()])
        rows.append(theta)
    return torch.stack(rows)


def train_pdiff(zoo: dict, scale: float = 1.0, tasks: tuple[str, ...] = PDIFF_TASKS, latent_noise: float = 0.1) -> dict:
    """p-diff per task: {"<task>/ae": ..., "<task>/denoiser": ..., "<task>/checkpoints": ...} + losses.
    ``latent_noise``: the official default 0.1; 0.5 is the variant the issue quotes (a fork's setting)."""
    nets, tensors, report = {}, {}, {}
    for i, task_id in enumerate(tasks):
        ck = pdiff_checkpoints(zoo, task_id, max(8, int(PDIFF_EPOCHS * min(scale, 1.0))))
        heads = ck[:, W.HEAD]
        torch.manual_seed(100 + i)
        ae = W.ParamAutoencoder(in_dim=heads.shape[1], dec_channels=(4, 32, 32, 8), latent_noise=latent_noise,
                                scale=float(heads.std()), shift=float(heads.mean()))
        data = ae.normalise(heads)
        opt, g = _adamw(ae.parameters()), torch.Generator().manual_seed(200 + i)
        for _ in tqdm(range(int(PDIFF_AE_STEPS * scale)), desc=f"p-diff autoencoder {task_id}", leave=False):
            idx = torch.randint(len(data), (50,), generator=g)
            loss = F.mse_loss(ae(data[idx], g), data[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        ae.eval()
        with torch.no_grad():
            latents = ae.encode(data)
        torch.manual_seed(300 + i)
        den = W.LatentDenoiser(*ae.latent_shape)
        ddpm_loss = _ddpm_steps(den, latents, PDIFF_SCHEDULER, int(PDIFF_DDPM_STEPS * scale), 400 + i)
        with torch.no_grad():
            recon = ck.clone()
            recon[:, W.HEAD] = ae.decode(latents) * ae.config.scale + ae.config.shift
        te = digit_tasks.data(task_id, "test")
        report[task_id] = {"ae_loss": float(loss), "ddpm_loss": ddpm_loss,
                           "checkpoint_accuracy": float(G.accuracy(ck, te.images, te.labels).mean()),
                           "reconstructed_accuracy": float(G.accuracy(recon, te.images, te.labels).mean())}
        nets[f"{task_id}/ae"], nets[f"{task_id}/denoiser"] = ae.eval(), den.eval()
        tensors[f"{task_id}/checkpoints"] = ck
    return {"nets": nets, "tensors": tensors, "report": report}


def task_features(encoder, run: Path = RUN) -> dict[str, torch.Tensor]:
    """simclr-digits features of every task's training images: {task_id: (N, 64)}."""
    return _cached("features", lambda: {t.id: G.image_features(encoder, digit_tasks.data(t.id, "train").images)
                                        for t in tqdm(digit_tasks.ALL, desc="image features")}, run)


def soft_clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets (pairs of one task are not negatives of each other):
    targets softmax((a a^T + b b^T) / 2 tau), cross-entropy both ways on logits a b^T / tau."""
    logits = a @ b.T / temperature
    targets = F.softmax((a @ a.T + b @ b.T) / 2 / temperature, dim=-1)
    return ((-targets * F.log_softmax(logits, -1)).sum(1).mean()
            + (-targets.T * F.log_softmax(logits.T, -1)).sum(1).mean()) / 2


def train_d2nwg(zoo: dict, encoder, scale: float = 1.0, run: Path = RUN) -> dict:
    """The weight VAE, the aligned dataset encoder, the conditional latent diffusion, on the seen tasks."""
    seen = {t.id for t in digit_tasks.SEEN}
    rows = [i for i, t in enumerate(zoo_tasks()) if t in seen]
    data, row_task = zoo["checkpoints"][rows], [zoo_tasks()[i] for i in rows]
    torch.manual_seed(10)
    vae = W.WeightVAE(scale=float(data.std()), shift=float(data.mean()))
    opt, g = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=2e-6), torch.Generator().manual_seed(11)
    for _ in tqdm(range(int(VAE_STEPS * scale)), desc="weight VAE", leave=False):
        idx = torch.randint(len(data), (32,), generator=g)
        post = vae.encode(data[idx])
        x = (data[idx] - vae.config.shift) / vae.config.scale
        rec = (vae.decode(post.sample(generator=g)) - vae.config.shift) / vae.config.scale
        loss = (rec - x).abs().mean() + 1000 * F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        means = vae.encode(data).mean
    vae.register_to_config(latent_scale=float(1 / means.std()))
    z0 = means * vae.config.latent_scale

    feats = task_features(encoder, run)
    labels = {t: torch.from_numpy(digit_tasks.data(t, "train").labels) for t in seen}

    def sets(idx, gen):
        pairs = [G.few_shot_set(feats[row_task[i]], labels[row_task[i]], G.PER_CLASS, gen) for i in idx.tolist()]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    torch.manual_seed(12)
    enc = W.DatasetEncoder(d_in=feats[row_task[0]].shape[1])
    head_set, head_w = torch.nn.Linear(64, 128), torch.nn.Linear(z0[0].numel(), 128)
    opt = torch.optim.AdamW([*enc.parameters(), *head_set.parameters(), *head_w.parameters()], lr=1e-3)
    g = torch.Generator().manual_seed(13)
    for _ in tqdm(range(int(CLIP_STEPS * scale)), desc="dataset encoder", leave=False):
        idx = torch.randint(len(z0), (32,), generator=g)
        s, present = sets(idx, g)
        clip = soft_clip_loss(head_set(enc(s, present)), head_w(z0[idx].flatten(1)))
        opt.zero_grad()
        clip.backward()
        opt.step()
    enc.eval().requires_grad_(False)

    torch.manual_seed(14)
    unet = W.ConditionalLatentUNet(latent_channels=z0.shape[1], size=z0.shape[2])

    def cond(idx, gen):
        with torch.no_grad():
            return enc(*sets(idx, gen))

    ldm_loss = _ddpm_steps(unet, z0, D2NWG_SCHEDULER, int(LDM_STEPS * scale), 15, cond=cond, batch=64)
    with torch.no_grad():
        recon = vae.decode(means)
    report = {"vae_loss": float(loss), "clip_loss": float(clip), "ldm_loss": ldm_loss, "train_tasks": len(seen),
              "train_checkpoints": len(rows)}
    acc_rec, acc_ck = [], []
    for t in sorted(seen):
        te, r = digit_tasks.data(t, "test"), [i for i, s in enumerate(row_task) if s == t]
        acc_rec.append(G.accuracy(recon[r], te.images, te.labels).mean())
        acc_ck.append(G.accuracy(data[r], te.images, te.labels).mean())
    report.update(reconstructed_accuracy=float(np.mean(acc_rec)), checkpoint_accuracy=float(np.mean(acc_ck)))
    return {"nets": {"vae": vae, "encoder": enc, "unet": unet.eval()}, "report": report}


def _export(name: str, nets: dict, tensors: dict, info: dict, scheduler: dict, zoo: Path) -> dict:
    folder = zoo / name
    tmp = zoo / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for key, net in nets.items():
        net.save_pretrained(tmp / key, safe_serialization=True)
    (tmp / "scheduler").mkdir(parents=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", **scheduler}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "checkpoints.safetensors")
    (tmp / "studio.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return write_manifest_entry(name, {"kind": "weightgen", "recipe": f"studio train {name}",
                                       "machine": machine_description(), **info.get("manifest", {})}, zoo)


def train(name: str, seed: int = 0, steps: int | None = None, zoo: Path = ZOO_DIR) -> dict:
    """Build ``name`` ("d2nwg-digits" or "pdiff-digits") and export it to the zoo. ``steps`` scales the
    stages relative to :data:`LDM_STEPS` (a quick check; the zoo is cached in runs/ only at full scale)."""
    scale = 1.0 if steps is None else steps / LDM_STEPS
    run = RUN if scale == 1.0 else RUNS_DIR / f"weightgen-scale{scale:g}"
    t0 = time.time()
    zoo_models = train_zoo(scale, run)
    t_zoo = time.time() - t0
    tensors = {"checkpoints": zoo_models["checkpoints"], "accuracy": zoo_models["accuracy"], "base": zoo_models["base"]}
    common = {"architecture": "tiny CNN, 1,954 parameters (studio.nets.weightgen)", "zoo_seeds": ZOO_SEEDS,
              "checkpoint_tasks": zoo_tasks(), "selection_tasks": [t.id for t in digit_tasks.SELECTION],
              "held_out_tasks": [t.id for t in digit_tasks.HELD_OUT], "zoo_seconds": round(t_zoo, 1)}
    t1 = time.time()
    if name == "pdiff-digits":
        out = train_pdiff(zoo_models, scale)
        tensors = {**out["tensors"]}
        info = {"kind": "weightgen", "method": "pdiff", "tasks": list(PDIFF_TASKS), **common,
                "latent_noise": 0.1, "input_noise": 0.001, "epochs": PDIFF_EPOCHS, "report": out["report"]}
        sched = PDIFF_SCHEDULER
    elif name == "d2nwg-digits":
        from studio.train.simclr import load_encoder

        out = train_d2nwg(zoo_models, load_encoder(), scale, run)
        info = {"kind": "weightgen", "method": "d2nwg", "encoder": "simclr-digits", "per_class": G.PER_CLASS,
                "tasks": [t.id for t in digit_tasks.SEEN], **common, "report": out["report"]}
        sched = D2NWG_SCHEDULER
    else:
        raise ValueError(f"unknown weight generator {name!r}")
    info["seconds"] = round(time.time() - t1, 1)
    info["manifest"] = {"train_seconds": info["seconds"], "zoo_seconds": round(t_zoo, 1), "report": out["report"]}
    return _export(name, out["nets"], tensors, info, sched, zoo)
