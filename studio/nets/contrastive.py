"""A small CLIP-style contrastive image-text model of the shapes world: the discriminative baseline
the compositionality papers compare diffusion classifiers with (Jeong et al., NeurIPS 2025, compare
with CLIP; Li et al., ICCV 2023, with CLIP ResNets and ViTs).

* **Text tower**: the *same* frozen text encoder as ``shapes-t2i`` (all-MiniLM-L6-v2 token
  embeddings, :mod:`studio.data.text`), then a trainable linear layer, a masked mean over the word
  pieces and an MLP to the joint space. MiniLM's token embeddings are contextual, so "a red circle"
  and "a blue circle" differ in every token, not only in the colour word.
* **Image tower**: a small CNN (three conv blocks to 4 x 4) whose map is *flattened*, not pooled,
  before the MLP to the joint space, so where things are is kept (the strongest choice for a
  binding test; CLIP's ResNets attention-pool instead).
* Both embeddings are L2-normalised; the logit scale is learned (CLIP's ``log(1 / 0.07)`` start,
  clamped at 100), and the loss is CLIP's symmetric cross-entropy.

Deviation from CLIP, said here and in docs/classify.md: a batch can hold the same caption twice (the
shapes world has 260 captions); those pairs are positives of each other (the targets are spread
evenly over identical captions) instead of false negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from studio.nets.judges import _block  # the judges' conv block (two 3 x 3 convs, BatchNorm, ReLU, 2 x 2 max-pool)


class ShapesCLIP(ModelMixin, ConfigMixin):
    """Images (B, 3, 32, 32) in [-1, 1] and MiniLM token embeddings (B, L, 384) + mask (B, L) ->
    unit vectors (B, ``embed_dim``) in one space; ``forward`` gives the (images x texts) logits."""

    @register_to_config
    def __init__(self, width: int = 16, text_dim: int = 384, hidden: int = 256, embed_dim: int = 128):
        super().__init__()
        self.image_body = nn.Sequential(_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.image_head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, hidden), nn.ReLU(),
                                        nn.Linear(hidden, embed_dim))
        self.token_proj = nn.Linear(text_dim, hidden)
        self.text_head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(self.image_body(x)), dim=-1)

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(tokens.dtype).unsqueeze(-1)
        pooled = (self.token_proj(tokens) * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(self.text_head(pooled), dim=-1)

    @property
    def scale(self) -> torch.Tensor:
        """The learned logit scale, clamped at 100 as CLIP clamps it."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scale * self.encode_image(images) @ self.encode_text(tokens, mask).T

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each image's softmax over the texts (B_images, B_texts)."""
        return self(images, tokens, mask).softmax(-1)


def clip_loss(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy; ``same`` (B, B) bool marks pairs with identical captions
    (the diagonal included): each row's target is spread evenly over them."""
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target.T * F.log_softmax(logits.T, 1), 1).mean())
