"""SIGN (issue 6, in progress): the losses and the teacher data of the distillation.

Losses (IGN's, as the paper's pseudocode routes their gradients, and the score-distillation
terms SIGN adds; there is no public SIGN code, so the distillation terms are this studio's
reading of the paper, documented as such):

* :func:`ign_losses`: ``L_rec = D(f(x), x)`` on data; ``L_idem = D(f_copy(f(z)), f(z))`` with
  f_copy a frozen copy, so the gradient flows only through the *inner* f; ``L_tight =
  -D(f(sg f(z)), sg f(z))`` through the *outer* f only (routing it through the frozen copy gives
  it no gradient at all, a known porting bug), clamped as ``tanh(L / (a L_ref)) a L_ref`` with
  a = 1.5 and ``L_ref = D(f(z), z)``. D is the per-image mean absolute error.
* :func:`dmd_loss`: distribution matching on ``f(z)`` noised to a random t: the gradient
  ``(x0_fake - x0_real) / mean|f(z) - x0_real|`` (DMD's normalised form of ``s_fake - s_real``),
  applied through the surrogate ``0.5 ||f(z) - sg(f(z) - grad)||^2``; the fake score is trained in
  alternation by :func:`denoising_loss` on samples of f.
* the regression term: ``D(f(z_k), x_k)`` on teacher pairs (below).

SIGN distils an idempotent one-step generator f from ``digits-cond`` (used unconditionally, its
null class). Besides the IGN terms and the distribution-matching term, its regression term pairs
a noise z with the teacher's *deterministic* DDIM sample from that same z (a consistency-style
target), so those pairs are computed once here and cached: :func:`teacher_pairs`.

Pair k's noise is drawn from its own generator (seed ``seed * 1_000_003 + k``), so pair k is the
same whatever ``n`` or chunking is asked for, and a stopped run resumes chunk by chunk.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from studio.core.device import make_generator
from studio.core.sampling import make_scheduler, run_to_end, sample
from studio.train.common import RUNS_DIR

TIGHT_CLAMP = 1.5  # a in tanh(L / (a L_ref)) a L_ref
PAIR_STEPS = 25  # DDIM steps of the teacher's deterministic (eta 0) sample
PAIR_SEED = 11


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """D: the per-image mean absolute error, ``(B,)``."""
    return (a - b).abs().flatten(1).mean(1)


def frozen_copy(f: torch.nn.Module) -> torch.nn.Module:
    """A copy of f that gives no gradient to its own weights (refresh it with :func:`sync`)."""
    g = copy.deepcopy(f)
    return g.requires_grad_(False)


def sync(f_copy: torch.nn.Module, f: torch.nn.Module) -> None:
    f_copy.load_state_dict(f.state_dict())


def ign_losses(f: Callable, f_copy: Callable, x: torch.Tensor, z: torch.Tensor,
               a: float = TIGHT_CLAMP) -> dict[str, torch.Tensor]:
    """IGN's three terms (means over the batch), each with the gradient routing of the paper's code."""
    fx = f(x)
    fz = f(z)
    f_z = fz.detach()
    ff_z = f(f_z)  # outer f trainable, inner output detached: tightness
    f_fz = f_copy(fz)  # outer f frozen, gradient through the inner f: idempotence
    rec = distance(fx, x)
    idem = distance(f_fz, fz)
    ref = distance(f_z, z)
    tight = -distance(ff_z, f_z)
    tight = torch.tanh(tight / (a * ref)) * a * ref
    return {"rec": rec.mean(), "idem": idem.mean(), "tight": tight.mean(), "fz": fz}


def dmd_loss(x: torch.Tensor, real_eps: Callable, fake_eps: Callable, alphas_cumprod: torch.Tensor,
             generator: torch.Generator, t_range: tuple[float, float] = (0.02, 0.98)) -> torch.Tensor:
    """Distribution-matching loss on generated images ``x`` (gradient flows into x only)."""
    T = len(alphas_cumprod)
    t = torch.randint(int(t_range[0] * T), int(t_range[1] * T), (x.shape[0],), generator=generator)
    abar = alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1))).to(x)
    noise = torch.randn(x.shape, generator=generator).to(x)
    with torch.no_grad():
        xt = abar.sqrt() * x + (1 - abar).sqrt() * noise
        x0_real = (xt - (1 - abar).sqrt() * real_eps(xt, t)) / abar.sqrt()
        x0_fake = (xt - (1 - abar).sqrt() * fake_eps(xt, t)) / abar.sqrt()
        weight = 1.0 / (x - x0_real).abs().flatten(1).mean(1).clamp_min(1e-5).view_as(abar)
        grad = (x0_fake - x0_real) * weight
    return 0.5 * ((x - (x - grad).detach()) ** 2).flatten(1).sum(1).mean()


def denoising_loss(eps_fn: Callable, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Epsilon-MSE at a random step: trains the fake score on samples of f (``x0`` detached)."""
    T = len(alphas_cumprod)
    t = torch.randint(0, T, (x0.shape[0],), generator=generator)
    abar = alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1))).to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    return ((eps_fn(abar.sqrt() * x0.detach() + (1 - abar).sqrt() * noise, t) - noise) ** 2).mean()


def pair_noise(k0: int, k1: int, shape: tuple[int, ...], seed: int = PAIR_SEED) -> torch.Tensor:
    """Noises of pairs k0 .. k1 - 1, each from its own generator."""
    return torch.cat([torch.randn((1, *shape), generator=make_generator(seed * 1_000_003 + k)) for k in range(k0, k1)])


@torch.no_grad()
def teacher_pairs(n: int, *, model=None, seed: int = PAIR_SEED, steps: int = PAIR_STEPS, chunk: int = 512,
                  root=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, x)``: n noises and the teacher's DDIM-``steps`` samples from them (null class), cached
    in ``runs/sign-pairs/`` one chunk per file."""
    if model is None:
        from studio.core.loading import load_zoo

        model = load_zoo("digits-cond")
    folder = (root or RUNS_DIR) / "sign-pairs" / f"{model.name}-seed{seed}-ddim{steps}"
    folder.mkdir(parents=True, exist_ok=True)
    null = model.info.get("null_class", 10)
    zs, xs = [], []
    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher pairs")
    for k0 in starts:
        k1 = min(n, k0 + chunk)
        path = folder / f"pairs_{k0:06d}_{k0 + chunk:06d}.safetensors"
        if path.exists():
            part = load_file(path)
        else:
            z_full = pair_noise(k0, k0 + chunk, model.sample_shape, seed)
            sched = make_scheduler("ddim", model.scheduler_config, model.prediction_type)

            def denoise(x, t):
                return model.model_fn(x, t, {"class_labels": torch.full((x.shape[0],), null)})

            x_full = run_to_end(sample(denoise, sched, tuple(z_full.shape), num_inference_steps=steps,
                                       latents=z_full, eta=0.0))
            part = {"z": z_full.contiguous(), "x": x_full.clamp(-1, 1).contiguous()}
            save_file(part, path)
        zs.append(part["z"][: k1 - k0])
        xs.append(part["x"][: k1 - k0])
    return torch.cat(zs), torch.cat(xs)


if __name__ == "__main__":  # python -m studio.train.sign N: precompute the pairs in the background
    import sys

    torch.set_num_threads(2)
    z, x = teacher_pairs(int(sys.argv[1]) if len(sys.argv) > 1 else 16384, progress=True)
    print(f"{len(z)} pairs ready: z {tuple(z.shape)}, x in [{x.min():.2f}, {x.max():.2f}]")
