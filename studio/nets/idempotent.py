"""The idempotent generator f of SIGN / IGN: one network whose fixed points are the data.

f has the data's input and output space: ``f(z)`` is a sample from noise in one evaluation,
``f(f(z))`` refines it, and ``f(x_corrupted)`` projects a corrupted image back towards the data.

The network is the zoo's digits UNet (:func:`studio.nets.unets.digits_unet`, a diffusers
``UNet2DModel``) called at one fixed timestep and the null class, its output read directly as
the image. The SIGN recipe initialises it from the teacher ``digits-cond`` at t = 999, where the
teacher's epsilon prediction of almost pure noise is almost the input, so f starts close to the
identity: every image a fixed point, and the training shrinks that set down to the digits.
IGN's paper uses a DCGAN-style encoder-decoder; this studio uses the UNet for both SIGN and the
plain-IGN baseline, so the two differ only in their objective (and the teacher's weights).
"""

from __future__ import annotations

import torch

FIXED_TIMESTEP = 999


class IdempotentNet(torch.nn.Module):
    """``f(x) = unet(x, t*, class_labels=null).sample``."""

    def __init__(self, unet: torch.nn.Module, timestep: int = FIXED_TIMESTEP, class_label: int | None = 10,
                 name: str = "f", info: dict | None = None):
        super().__init__()
        self.unet = unet
        self.timestep = int(timestep)
        self.class_label = class_label
        self.name = name
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.full((x.shape[0],), self.timestep, device=x.device, dtype=torch.long)
        kwargs = {}
        if self.class_label is not None:
            kwargs["class_labels"] = torch.full((x.shape[0],), self.class_label, device=x.device, dtype=torch.long)
        return self.unet(x, t, **kwargs).sample

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    @torch.no_grad()
    def iterate(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """``[f(x), f(f(x)), ..., f^k(x)]``."""
        out = []
        for _ in range(k):
            x = self(x)
            out.append(x)
        return out
