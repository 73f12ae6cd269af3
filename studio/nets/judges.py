"""Judges: the measuring instruments. Trained apart from anything a method uses.

* :class:`DigitsNet`: a small CNN classifier on 16 x 16 digits. ``judge-digits`` grades the
  asked-for class; ``fd-digits`` (another width and seed) gives features for FD-digits.
* :class:`ShapesGridNet`: reads a 32 x 32 shapes scene as its 3 x 3 regions, each cell
  predicting its shape (empty / circle / square / triangle) and colour. ``judge-shapes`` grades
  concepts; ``fd-shapes`` gives features for FD-shapes.

Both are diffusers ``ModelMixin`` + ``ConfigMixin`` so they save and load as safetensors in the
same layout as the UNets.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from studio.data import shapes


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.MaxPool2d(2),
    )


class DigitsNet(ModelMixin, ConfigMixin):
    """(B, 1, 16, 16) in [-1, 1] -> logits (B, 10); ``features`` -> (B, feature_dim)."""

    @register_to_config
    def __init__(self, width: int = 32, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_block(1, width), _block(width, 2 * width))  # -> 4 x 4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ShapesGridNet(ModelMixin, ConfigMixin):
    """(B, 3, 32, 32) in [-1, 1] -> (shape logits (B, 9, 4), colour logits (B, 9, 6))."""

    @register_to_config
    def __init__(self, width: int = 32, feature_dim: int = 256):
        super().__init__()
        self.body = nn.Sequential(_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width))  # 4x4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width * 16, feature_dim), nn.ReLU())
        self.cells = nn.Linear(feature_dim, 9 * (1 + len(shapes.SHAPES) + len(shapes.COLOURS)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.cells(self.features(x)).view(x.shape[0], 9, -1)
        n_shape = 1 + len(shapes.SHAPES)
        return out[..., :n_shape], out[..., n_shape:]

    @torch.no_grad()
    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell: shape index + 1 (0 = empty) and colour index, each (B, 9)."""
        s, c = self(x)
        return s.argmax(-1), c.argmax(-1)


def concept_present(shape_cells: torch.Tensor, colour_cells: torch.Tensor,
                    shape: str | None, colour: str | None, region: int | None) -> torch.Tensor:
    """(B,) bool: some occupied cell matches every given attribute (None = any)."""
    ok = shape_cells > 0
    if shape is not None:
        ok = ok & (shape_cells == shapes.SHAPES.index(shape) + 1)
    if colour is not None:
        ok = ok & (colour_cells == shapes.COLOURS.index(colour))
    if region is not None:
        mask = torch.zeros(9, dtype=torch.bool, device=ok.device)
        mask[region] = True
        ok = ok & mask
    return ok.any(-1)
