"""Diffusion features: what a denoiser's decoder knows about an image (DDAE, Xiang et al., ICCV 2023,
official code FutureXiang/ddae ``model/DDPM.py::get_feature``; diffssl, Mukhopadhyay et al.).

As DDAE's ``get_feature``: ``x_t = q_sample(x0, t, eps)`` (``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``),
one forward pass of the frozen UNet, forward hooks on **every decoder block**, and global average
pooling over H, W of each block's output to a ``(B, C)`` vector. A DDAE decoder "ResAttBlock" is a
residual block followed by its attention layer when the level has one; in a diffusers
``UNet2DModel`` / ``UNet2DConditionModel`` that is ``up_blocks[i].resnets[j]`` (hooked at
``up_blocks[i].attentions[j]`` when there is one), so those are the blocks hooked here, named
``up{i}.{j}`` (the upsamplers between levels are not blocks in DDAE either). ``digits-cond`` has six
(64, 64 | 64, 64 | 32, 32 channels, at 4 x 4, 8 x 8 and 16 x 16).

The condition is the model's null class (the label classifier-free guidance drops to), as DDAE's DiT
transfer feeds DiT its null class 1000; an unconditional UNet gets none. Timesteps ``t`` are diffusers'
0-based indices into the training schedule (DDAE's DDPM counts from 1 with ``abar_0 = 1``: its
t = 1, 11, 21 are ``t`` = 0, 10, 20 here).

Deviation, said here and in docs/classify.md: DDAE draws a fresh noise per call; here image ``i`` of a
batch uses the noise of ``make_generator(seed + i)``, so a feature (and the probe's reading) is
deterministic given the seed and does not depend on the rest of the batch.

:class:`LinearProbe` is the shipped ``probe-digits`` zoo entry: the frozen UNet, one (block, t), the
training features' standardisation and a linear head, as one module ``probe(x0) -> logits``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from studio.core.device import make_generator


def decoder_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{name: module}`` of every decoder block (DDAE's ResAttBlock) of a diffusers UNet, in forward order."""
    blocks = {}
    for i, up in enumerate(unet.up_blocks):
        attentions = getattr(up, "attentions", None)
        for j, res in enumerate(up.resnets):
            blocks[f"up{i}.{j}"] = attentions[j] if attentions is not None and j < len(attentions) else res
    return blocks


def block_channels(unet: torch.nn.Module) -> dict[str, int]:
    """Output channels of each decoder block (the length of its pooled feature)."""
    out = {}
    for i, up in enumerate(unet.up_blocks):
        for j, res in enumerate(up.resnets):
            out[f"up{i}.{j}"] = res.out_channels if hasattr(res, "out_channels") else res.conv2.out_channels
    return out


def _tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


@contextmanager
def hooked(unet: torch.nn.Module, names: list[str] | None = None):
    """Forward hooks on the decoder blocks ``names`` (default all): yields a dict the forward pass fills
    with each block's globally average pooled output ``(B, C)``; the hooks are removed on exit."""
    blocks = decoder_blocks(unet)
    names = list(blocks) if names is None else list(names)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ValueError(f"no decoder block {', '.join(unknown)}; the blocks are {', '.join(blocks)}")
    acts: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, _inputs, output):
            acts[name] = _tensor(output).float().mean(dim=(2, 3))  # global average pooling over H, W
        return fn

    handles = [blocks[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def noises(shape: tuple[int, ...], seed: int, n: int) -> torch.Tensor:
    """``(n, *shape)`` standard normal noise, image ``i`` from ``make_generator(seed + i)``."""
    return torch.stack([torch.randn(shape, generator=make_generator(seed + i)) for i in range(n)])


def q_sample(x0: torch.Tensor, t: int, abar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at one timestep ``t`` (0-based)."""
    a = abar[int(t)].to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps.to(x0)


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """``abar`` of a model's training schedule (its scheduler config, read by diffusers' DDPMScheduler)."""
    from studio.core.sampling import make_scheduler

    return make_scheduler("ddpm", scheduler_config).alphas_cumprod


@torch.no_grad()
def pooled_features(unet: torch.nn.Module, abar: torch.Tensor, x0: torch.Tensor, t: int, *, seed: int = 0,
                    null_class: int | None = None, names: list[str] | None = None,
                    batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``{block: (B, C)}``: GAP features of every decoder block (or ``names``) for images ``x0`` (B, C, H, W)
    in [-1, 1] noised to ``t``; image ``i`` uses noise seed ``seed + i``; the condition is ``null_class``
    (none for an unconditional UNet)."""
    device = next(unet.parameters()).device
    out: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(x0), batch_size):
        x = x0[s:s + batch_size].float()
        eps = noises(tuple(x.shape[1:]), seed + s, len(x))
        x_t = q_sample(x, t, abar, eps).to(device)
        tt = torch.full((len(x),), int(t), device=device)
        kw = {} if null_class is None else {"class_labels": torch.full((len(x),), int(null_class), device=device)}
        with hooked(unet, names) as acts:
            unet(x_t, tt, **kw)
        for k, v in acts.items():
            out.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


class LinearProbe(torch.nn.Module):
    """A frozen diffusion UNet read at one (decoder block, t), its GAP feature standardised with the
    training features' mean / std, and a linear head: ``probe(x0) -> logits`` (B, classes).

    The noise of image ``i`` is ``make_generator(seed + i)``'s, so a reading is repeatable. One forward at
    a time per probe (its hooks are per call; a lock keeps two sessions' passes apart).
    """

    def __init__(self, unet: torch.nn.Module, abar: torch.Tensor, block: str, t: int, mean: torch.Tensor,
                 std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, null_class: int | None = None,
                 seed: int = 0, name: str = "probe", info: dict | None = None):
        super().__init__()
        self.unet = unet
        self.register_buffer("abar", abar.float().clone())
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight.float())
            self.head.bias.copy_(bias.float())
        self.block, self.t, self.null_class, self.seed, self.name = block, int(t), null_class, int(seed), name
        self.info = dict(info or {})
        self._lock = threading.Lock()

    def features(self, x0: torch.Tensor) -> torch.Tensor:
        with self._lock:
            f = pooled_features(self.unet, self.abar, x0, self.t, seed=self.seed, null_class=self.null_class,
                                names=[self.block])[self.block]
        return (f.to(self.mean.device) - self.mean) / self.std

    def forward(self, x0: torch.Tensor, **_) -> torch.Tensor:
        return self.head(self.features(x0))
