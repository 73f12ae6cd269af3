"""Generated classifiers: sampling weight vectors (D2NWG, p-diff), evaluating them, fine-tuning, memorisation.

The Weights method, its benchmark, its notebook and the recipe's quality check all call these.
A *classifier* is a flat vector of :data:`studio.nets.weightgen.N_PARAMS` values (the tiny CNN of
:mod:`studio.nets.weightgen`); a *few-shot set* is some labelled examples of a task, read by the
studio's own self-supervised image encoder (``simclr-digits``; never the judge).

* :func:`d2nwg_sample`: D2NWG's conditional latent diffusion (the dataset encoding of a few-shot set
  concatenated to the latent), through the studio's one sampling loop, then the weight VAE's decoder.
* :func:`pdiff_sample`: p-diff's unconditional latent DDPM of one task (x_t and x0 clamped to [-1, 1]
  each step, as the official sampler), then its autoencoder's decoder (the head; the rest is the
  task's frozen layers).
* :func:`accuracy`, :func:`memorisation` (nearest training checkpoint: distance and prediction
  agreement), :func:`finetune` (several starts side by side, plain SGD, the accuracy curve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from studio.core.sampling import Progress, make_scheduler, sample
from studio.nets import weightgen as W

PER_CLASS = 5  # examples per class a dataset encoding reads (D2NWG's MLP encoder: 5; set encoder: 20)
FINETUNE_LR = 0.01  # plain SGD, momentum 0.9; chosen among 0.01 / 0.03 / 0.1 on the selection tasks (benchmarks/bench_weights.py)
MOMENTUM = 0.9


@torch.no_grad()
def image_features(encoder: torch.nn.Module, images, batch: int = 1024) -> torch.Tensor:
    """(N, d) features of (N, 1, 16, 16) images in [-1, 1] from the self-supervised encoder (its ``pooled``)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return torch.cat([encoder.pooled(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def few_shot_set(features: torch.Tensor, labels, per_class: int = PER_CLASS,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A few-shot set as the dataset encoder reads it: ((10, per_class, d) features, (10,) present).

    Each present class gets ``per_class`` of its examples, drawn without replacement where it has
    that many and with replacement where it has fewer (a drawn set of 2 examples of a class is
    read as 5 with repeats); absent classes are zeros and marked absent."""
    labels = torch.as_tensor(np.asarray(labels)).long()
    out = torch.zeros(10, per_class, features.shape[1])
    present = torch.zeros(10, dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            continue
        present[c] = True
        if len(idx) >= per_class:
            pick = idx[torch.randperm(len(idx), generator=generator)[:per_class]]
        else:
            pick = idx[torch.randint(len(idx), (per_class,), generator=generator)]
        out[c] = features[pick]
    return out, present


@dataclass
class Generated:
    thetas: torch.Tensor  # (k, N_PARAMS) classifier weight vectors
    seconds: float = 0.0


def d2nwg_sample(gen, sets: torch.Tensor, present: torch.Tensor, k: int, seed: int, steps: int = 25,
                 scheduler: str = "ddim") -> Iterator[Progress | torch.Tensor]:
    """k weight vectors for the task a few-shot set shows; yields sampling progress, then (k, N_PARAMS).

    ``gen``: a :class:`~studio.core.models.WeightGenerator` (D2NWG); ``sets`` (10, n, d), ``present`` (10,)."""
    vae, encoder, unet = gen.nets["vae"], gen.nets["encoder"], gen.nets["unet"]
    with torch.no_grad():
        cond = encoder(sets[None], present[None])  # (1, d_cond)
    sched = make_scheduler(scheduler, gen.scheduler_config)
    denoise = lambda z, t: unet(z, t.reshape(1).expand(len(z)), cond)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        *progress, z = sample(denoise, sched, (k, *vae.latent_shape), num_inference_steps=steps, generator=g)
        yield from progress
        yield vae.decode(z / vae.config.latent_scale)


def pdiff_sample(gen, task_id: str, k: int, seed: int, steps: int = 25,
                 scheduler: str = "ddim") -> Iterator[Progress | torch.Tensor]:
    """k weight vectors from p-diff's model of ``task_id`` (one model per task: it cannot take a new task)."""
    if task_id not in gen.info["tasks"]:
        raise KeyError(task_id)
    ae, denoiser = gen.nets[f"{task_id}/ae"], gen.nets[f"{task_id}/denoiser"]
    sched = make_scheduler(scheduler, gen.scheduler_config, clip_sample=True)  # x0 clamped to [-1, 1]
    denoise = lambda z, t: denoiser(z, t.reshape(1).expand(len(z)))
    clamp = lambda x, t: x.clamp(-1, 1)  # the official sampler clamps every x_t too
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        *progress, z = sample(denoise, sched, (k, *ae.latent_shape), num_inference_steps=steps, generator=g,
                              correct=clamp)
        yield from progress
        head = ae.decode(z) * ae.config.scale + ae.config.shift
    thetas = gen.frozen[task_id].expand(k, -1).clone()
    thetas[:, W.HEAD] = head
    yield thetas


@torch.no_grad()
def predictions(thetas: torch.Tensor, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(K, N) predicted classes of K classifiers on (N, 1, 16, 16) images."""
    x = torch.as_tensor(x).float()
    return torch.cat([W.batched_logits(thetas[i:i + batch], x).argmax(-1) for i in range(0, len(thetas), batch)])


def accuracy(thetas: torch.Tensor, x, y) -> np.ndarray:
    """(K,) accuracy of each classifier on labelled images (x, y)."""
    y = torch.as_tensor(np.asarray(y)).long()
    return (predictions(thetas, x) == y).float().mean(1).numpy()


@dataclass
class Nearest:
    index: np.ndarray      # (K,) the nearest training checkpoint of each model (L2 in weight space)
    distance: np.ndarray   # (K,) its L2 distance
    agreement: np.ndarray  # (K,) share of the images on which the two predict the same class
    spread: float          # median distance between two training checkpoints of one task: the scale to read distances by


def memorisation(thetas: torch.Tensor, checkpoints: torch.Tensor, x, tasks: list[str] | None = None) -> Nearest:
    """Each generated model's nearest training checkpoint (Zeng et al.'s memorisation check):
    distance and prediction agreement on ``x``. ``tasks`` (one per checkpoint) sets the spread."""
    d = torch.cdist(thetas.double(), checkpoints.double())
    index = d.argmin(1)
    agree = (predictions(thetas, x) == predictions(checkpoints[index], x)).float().mean(1)
    within = []
    if tasks is not None:
        for t in set(tasks):
            rows = [i for i, s in enumerate(tasks) if s == t]
            if len(rows) > 1:
                c = torch.cdist(checkpoints[rows].double(), checkpoints[rows].double())
                within.append(c[torch.triu(torch.ones_like(c, dtype=torch.bool), 1)])
    spread = float(torch.cat(within).median()) if within else float("nan")
    return Nearest(index.numpy(), d.min(1).values.float().numpy(), agree.numpy(), spread)


def finetune(starts: torch.Tensor, x, y, steps: int, lr: float = FINETUNE_LR, batch: int = 64, seed: int = 0,
             eval_x=None, eval_y=None, record: tuple[int, ...] = ()) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """Plain SGD (momentum 0.9) on (x, y) from each of several starting vectors (S, N_PARAMS) side by side,
    the same batches for every start. Yields (step, accuracy on (eval_x, eval_y) per start, the vectors)
    at step 0 and at each step in ``record`` (every step if ``record`` is empty)."""
    theta = starts.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=lr, momentum=MOMENTUM)
    x, y = torch.as_tensor(np.asarray(x)).float(), torch.as_tensor(np.asarray(y)).long()
    g = torch.Generator().manual_seed(int(seed))
    show = lambda step: (step, accuracy(theta.detach(), eval_x, eval_y) if eval_x is not None else None,
                         theta.detach().clone())
    yield show(0)
    for step in range(1, steps + 1):
        idx = torch.randperm(len(x), generator=g)[:batch]
        out = W.batched_logits(theta, x[idx])  # (S, b, 10)
        loss = F.cross_entropy(out.flatten(0, 1), y[idx].repeat(len(theta)), reduction="sum") / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not record or step in record:
            yield show(step)
