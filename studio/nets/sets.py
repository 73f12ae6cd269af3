"""Set encoders: permutation-invariant pooling of a set of feature vectors (Set Transformer, Lee et al. 2019).

Shared by DiffusionNAG's task encoder (:mod:`studio.nets.nag`) and D2NWG's dataset encoder
(:mod:`studio.nets.weightgen`): both pool each class's examples, then the classes ("intra-class, then
inter-class"), with one :class:`SetPool` each.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SetPool(nn.Module):
    """Set Transformer pooling ('sabPF'): a self-attention block over the set, then attention from
    one learned seed (PMA), then a linear layer. (B, n, d_in) -> (B, d_out).

    ``mask`` (B, n), True where an element is absent (padding): absent elements are neither attended
    to nor pooled. Every row needs at least one present element."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(d_in, d_hidden)
        self.sab = nn.MultiheadAttention(d_hidden, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(d_hidden), nn.LayerNorm(d_hidden)
        self.ff = nn.Sequential(nn.Linear(d_hidden, d_hidden), nn.ReLU())
        self.seed = nn.Parameter(torch.randn(1, 1, d_hidden) / math.sqrt(d_hidden))
        self.pma = nn.MultiheadAttention(d_hidden, heads, batch_first=True)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(s)
        h = self.ln1(h + self.sab(h, h, h, key_padding_mask=mask, need_weights=False)[0])
        h = self.ln2(h + self.ff(h))
        pooled = self.pma(self.seed.expand(len(h), -1, -1), h, h, key_padding_mask=mask, need_weights=False)[0]
        return self.out(pooled[:, 0])
