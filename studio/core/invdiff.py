"""InvDiff (Hou et al., KDD 2025; official ``Hundredl/InvDiff``): bias mitigation without bias labels.

Three pieces, each as the official code does it:

* **MAX** (``src/group/train_group.py``, :func:`infer_groups`): from one loss per training sample
  ``l`` (n,), soft group weights ``W`` (n, G), rows on the simplex, initialised U(0, 1), are moved
  by Adam (lr 0.01, 500 epochs) to *maximise* the spread of the groups' weighted mean losses
  plus ``alpha`` times the smallest weighted loss:
  ``minimise  -std_g( sum_i W_ig l_i / sum_i W_ig ) - alpha * min_{i,g} W_ig l_i``,
  then each step clamped at 0 and each row divided by its sum. Groups whose samples the model
  fits badly separate from those it fits well: the minority of a spurious correlation.
* **MIN** (``src/train_text_to_image.py`` with ``--eiil 1 --delta True``, :func:`group_loss`):
  per-sample MSE of the combined model on its training target; per group the W-weighted mean
  over the batch, ``L_g = sum_i W_ig l_i / (sum_i W_ig + 1e-9)``; groups with ``L_g > 1e-9``
  kept; ``loss = mean_g L_g + lambda * var_g L_g`` (the unbiased variance; the mean alone when
  one group is left).
* **Sampling** (``src/model/epsilon_with_delta.py``, :func:`mix`): the frozen biased model's
  prediction and the trained module's, ``r * delta + (1 - r) * eps_b`` for 0 < r <= 1 (the
  scripts' r = 0.8), ``r * delta + eps_b`` for r > 1, ``delta + eps_b`` for r <= -1.

The official MAX step reads ``l_i = mean((pred_i - x0_i)^2)``: the prediction against the clean
*latents* it stored, not the noise targets it stored beside them (:data:`GROUPER_TARGETS`).
:func:`studio.train.invdiff.sample_losses` computes both; which one the Debias tab ships is said
where it is chosen.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

GrouperTarget = Literal["latents", "targets"]
GROUPER_TARGETS: tuple[str, ...] = ("latents", "targets")  # the official code's, and the training target
MAX_EPOCHS, MAX_LR = 500, 0.01


def mix(base: torch.Tensor, delta: torch.Tensor, r: float) -> torch.Tensor:
    """``EpsilonWithDelta.forward``: the two predictions combined by the ratio ``r``."""
    if r <= -1:
        return delta + base
    if r > 1:
        return r * delta + base
    return r * delta + (1 - r) * base


def mixed_fn(base_fn: Callable, delta_fn: Callable, r: float) -> Callable:
    """A model function ``(x_t, t, cond) -> prediction`` that mixes two (the sampler is unchanged);
    ``r = 0`` is the biased model alone."""
    if r == 0:
        return base_fn

    def fn(x, t, cond):
        return mix(base_fn(x, t, cond), delta_fn(x, t, cond), r)
    return fn


def infer_groups(losses, groups: int, alpha: float, epochs: int = MAX_EPOCHS, lr: float = MAX_LR,
                 seed: int = 0) -> torch.Tensor:
    """MAX: soft group weights (n, groups), rows summing to 1, from per-sample losses (n,)."""
    l = torch.as_tensor(np.asarray(losses), dtype=torch.float32).reshape(-1, 1)
    if groups < 2 or len(l) < groups:
        raise ValueError(f"need at least 2 groups and as many samples (got {groups} groups, {len(l)} samples)")
    w = torch.rand((len(l), groups), generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(epochs):
        weighted = l * w  # (n, G)
        group_mean = weighted.sum(0) / w.sum(0)
        loss = -torch.std(group_mean) - alpha * weighted.min()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # back onto the simplex, as the official code does it
            w.clamp_(min=0.0)
            w.div_(w.sum(1, keepdim=True))
    return w.detach()


def group_loss(per_sample: torch.Tensor, weights: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict]:
    """MIN: ``mean_g L_g + lam * var_g L_g`` over the batch's groups; ``per_sample`` (B,), ``weights`` (B, G)."""
    group_mean = (per_sample[None] @ weights)[0] / (weights.sum(0) + 1e-9)  # (G,)
    kept = group_mean[group_mean > 1e-9]
    kept = group_mean if len(kept) == 0 else kept
    mean = kept.mean()
    var = kept.var() if len(kept) > 1 else torch.zeros_like(mean)
    return (mean + lam * var if len(kept) > 1 else mean), {"mean": float(mean), "var": float(var)}


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error per sample."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)


def purity(weights: torch.Tensor | np.ndarray, truth) -> dict:
    """How well hard groups (argmax of the soft weights) recover a true attribute (measuring only):
    purity (each group's majority class share, weighted by size), normalised mutual information,
    and per group its size and its share of each true class."""
    from sklearn.metrics import normalized_mutual_info_score

    hard = np.asarray(torch.as_tensor(weights).argmax(1))
    truth = np.asarray(truth)
    classes = np.unique(truth)
    table = {int(g): {"size": int((hard == g).sum()),
                      **{str(c): float(np.mean(truth[hard == g] == c)) for c in classes}}
             for g in np.unique(hard)}
    pure = sum(max(int(np.sum(truth[hard == g] == c)) for c in classes) for g in np.unique(hard)) / len(truth)
    return {"purity": float(pure), "nmi": float(normalized_mutual_info_score(truth, hard)), "groups": table}


@torch.no_grad()
def colour_readout(judge: torch.nn.Module, images: torch.Tensor, shape: str | None,
                   classes: tuple[str, ...]) -> dict:
    """What the shapes judge reads on ``images`` for the object of ``shape`` (any object when None):
    ``counts`` per colour of the world, ``missing`` (no such object found), ``n``, and the
    :func:`~studio.core.metrics.bias_score` over ``classes`` (the attribute's classes; None when
    none of the images holds one of them)."""
    from studio.core.metrics import bias_score, shapes_colours_of
    from studio.data.shapes import COLOURS

    colours = shapes_colours_of(judge, images, shape)
    counts = {c: colours.count(c) for c in COLOURS}
    among = [counts[c] for c in classes]
    return {"counts": counts, "missing": colours.count(None), "n": len(colours),
            "bias_score": bias_score(among) if sum(among) else None}


def sample(dm, delta: torch.nn.Module | None, r: float, cond: dict, uncond: dict, seeds: list[int], *,
           guidance: float, scheduler: str, steps: int, preview_every: int = 0):
    """The studio's sampling loop on InvDiff's mixed prediction (``delta`` None or ``r = 0``: the biased
    model alone), classifier-free guidance on the mix as the official pipeline applies it (the wrapped
    UNet serves both branches). Yields Progress, then the images (B, C, H, W) in [-1, 1]."""
    from studio.core import guidance as G
    from studio.core.sampling import make_scheduler, sample_images

    fn = dm.model_fn if delta is None else mixed_fn(dm.model_fn, lambda x, t, c: delta(x, t, **c).sample, r)
    denoise = G.bind(fn, cond) if guidance == 1.0 else G.cfg(fn, cond, uncond, guidance)
    sched = make_scheduler(scheduler, dm.scheduler_config, dm.prediction_type)
    yield from sample_images(dm, denoise, sched, seeds, num_inference_steps=steps, preview_every=preview_every)
