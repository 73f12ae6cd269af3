"""A small self-supervised digits encoder: the frozen target REPA aligns a denoiser's hidden states to.

REPA (Yu et al., ICLR 2025) aligns the diffusion transformer's patch tokens with a frozen,
pretrained, *self-supervised* encoder's patch tokens (DINOv2's ``x_norm_patchtokens``). Offline
and at 16 x 16 there is no DINOv2, so this stands in for it (a deviation, said in docs/train.md):
a CNN trained with SimCLR's NT-Xent loss (Chen et al. 2020) on the digits training images only, no
labels (recipe ``studio train simclr-digits``, :mod:`studio.train.simclr`). It is neither a judge
nor the FD network, so REPA is not rewarded for pleasing the instruments that grade it.

:class:`DigitsSSLEncoder`: (B, 1, 16, 16) in [-1, 1] -> three stages of two 3 x 3 convs
(GroupNorm, SiLU), stride-2 downsampling 16 -> 8 -> 4, a 1 x 1 conv to ``dim`` channels: a 4 x 4
grid of ``dim``-dimensional patch tokens.

* ``tokens(x)`` (B, 16, dim): the grid in row-major order, each token through a LayerNorm without
  affine (DINOv2's patch tokens also leave through its final norm; REPA compares them by cosine,
  so only the direction matters, and a norm without learned scale keeps every token on one scale);
* ``pooled(x)`` (B, dim): the tokens' mean, SimCLR's representation ``h`` (for probes);
* ``project(x)`` (B, 64): the projection head ``g`` (MLP dim -> 128 -> 64) SimCLR's loss reads;
  used in training only. ``forward(x)`` is ``pooled``; ``forward(x, project=True)`` is ``project``
  (the recipe calls it that way so a DistributedDataParallel wrapper sees the forward pass).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


def _conv(c_in: int, c_out: int, stride: int = 1, groups: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU())


class DigitsSSLEncoder(ModelMixin, ConfigMixin):
    """(B, 1, 16, 16) digits in [-1, 1] -> a 4 x 4 grid of ``dim``-dimensional patch tokens."""

    grid = 4  # tokens per side: 16 tokens

    @register_to_config
    def __init__(self, dim: int = 64, width: int = 32, proj_hidden: int = 128, proj_dim: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(1, w), _conv(w, w),                      # 16 x 16
            _conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w),  # 8 x 8
            _conv(2 * w, 3 * w, stride=2), _conv(3 * w, 3 * w),  # 4 x 4
            nn.Conv2d(3 * w, dim, 1),
        )
        self.head = nn.Sequential(nn.Linear(dim, proj_hidden), nn.SiLU(), nn.Linear(proj_hidden, proj_dim))

    @property
    def dim(self) -> int:
        return self.config.dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 16, dim): the 4 x 4 feature map flattened row-major, each token layer-normed (no affine)."""
        t = self.body(x).flatten(2).transpose(1, 2)
        return F.layer_norm(t, (t.shape[-1],))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim): the mean of the tokens."""
        return self.tokens(x).mean(1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, proj_dim): the projection head on ``pooled`` (training only)."""
        return self.head(self.pooled(x))

    def forward(self, x: torch.Tensor, project: bool = False) -> torch.Tensor:
        return self.project(x) if project else self.pooled(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss: ``z1[i]`` and ``z2[i]`` are two views of one image; every other of the
    2B - 2 views in the batch is a negative. Cosine similarities over ``temperature``, cross-entropy
    of each view towards its partner, averaged over all 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)
