"""A NAS-Bench-201 cell network sized for 8 x 8 digits (the Architectures tab's ground truth).

Operations as NAS-Bench-201 defines them: ``nor_conv_kxk`` = ReLU -> Conv(k x k, same padding,
no bias) -> BatchNorm; ``avg_pool_3x3`` = 3 x 3 average pooling (stride 1, padding not counted);
``skip_connect`` = identity; ``none`` = zero. A node sums its incoming edges. Macro skeleton
(NAS-Bench-201 stacks 3 x 5 cells with residual reductions on 32 x 32 images; digits are 8 x 8):
stem Conv3x3(1 -> C) + BN, one cell at 8 x 8, 2 x 2 average pooling, one cell at 4 x 4,
BN -> ReLU -> global average pool -> linear.
"""

from __future__ import annotations

import torch
from torch import nn

from studio.data import nasbench


def _op(name: str, c: int) -> nn.Module:
    if name == "nor_conv_1x1":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
    if name == "nor_conv_3x3":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity()
    raise ValueError(name)


class Cell(nn.Module):
    def __init__(self, arch: str, c: int):
        super().__init__()
        self.ops = nasbench.parse(arch)
        self.edges = nn.ModuleDict({f"{j}_{i}": _op(op, c) for (j, i), op in zip(nasbench.EDGES, self.ops)
                                    if op != "none"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            out = torch.zeros_like(x)
            for i in range(j):
                key = f"{j}_{i}"
                if key in self.edges:
                    out = out + self.edges[key](nodes[i])
            nodes.append(out)
        return nodes[3]


class CellNet(nn.Module):
    def __init__(self, arch: str, n_classes: int = 10, c: int = 16):
        super().__init__()
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cell1, self.cell2 = Cell(arch, c), Cell(arch, c)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) digits -> (B, n_classes) logits."""
        x = self.cell1(self.stem(x))
        return self.head(self.cell2(nn.functional.avg_pool2d(x, 2)))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def flops(arch: str, c: int = 16, n_classes: int = 10) -> int:
    """Multiply-accumulates of one 8 x 8 forward pass (convolutions and the linear head)."""
    per_cell = sum({"nor_conv_1x1": c * c, "nor_conv_3x3": 9 * c * c}.get(op, 0) for op in nasbench.parse(arch))
    return 64 * 9 * c + 64 * per_cell + 16 * per_cell + c * n_classes
