"""A NAS-Bench-201 cell network sized for 8 x 8 digits (the Architectures tab's ground truth).

Operations as NAS-Bench-201 defines them: ``nor_conv_kxk`` = ReLU -> Conv(k x k, same padding,
no bias) -> BatchNorm; ``avg_pool_3x3`` = 3 x 3 average pooling (stride 1, padding not counted);
``skip_connect`` = identity; ``none`` = zero. A node sums its incoming edges. Macro skeleton
(NAS-Bench-201 stacks 3 x 5 cells with residual reductions on 32 x 32 images; digits are 8 x 8):
stem Conv3x3(1 -> C) + BN, one cell at 8 x 8, 2 x 2 average pooling, one cell at 4 x 4,
BN -> ReLU -> global average pool -> linear.
"""

from __future__ import annotations

import numpy as np
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


class GroupedConv(nn.Conv2d):
    """``nn.Conv2d`` with ``groups`` that can also run as unfold + one batched matmul
    (``matmul = True``): the same function and parameters. On a GPU, thousands of groups of 8
    channels are much faster this way than through cuDNN's grouped-convolution kernels."""

    matmul = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.matmul:
            return super().forward(x)
        b, _, h, w = x.shape
        g, k = self.groups, self.kernel_size[0]
        cols = x if k == 1 else nn.functional.unfold(x, k, padding=k // 2)  # (B, G * Cin * k * k, H * W)
        weight = self.weight.view(g, self.out_channels // g, -1)
        out = torch.einsum("bgip,goi->bgop", cols.reshape(b, g, -1, h * w), weight)
        return out.reshape(b, self.out_channels, h, w)


class CellNets(nn.Module):
    """Many :class:`CellNet` s of one width trained at once (the ground truth's fast path).

    Network g's channels are the g-th slice of every layer: grouped convolutions (groups = number
    of networks) and per-channel BatchNorm keep the networks independent, and every edge computes
    all operations, masked by network g's operation on that edge (``none`` masks all). An operation
    a network does not use gets zero gradient, so Adam never moves it. Each network's function and
    training are those of a :class:`CellNet` of its architecture (``test_nasbench`` checks the
    forward pass). Inputs ``(B, G, 1, 8, 8)`` (network g sees ``x[:, g]``), logits ``(B, G, K)``.

    Initialisation is per network and independent of the others in the batch: network g's slices
    are drawn from a generator seeded with ``seed`` (the same for every network), in a fixed layout
    that includes the operations it does not use, so training one cell alone reproduces the table's
    start exactly. ``matmul=True`` runs the convolutions as batched matmuls
    (:class:`GroupedConv`; the GPU path).
    """

    CONVS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}

    def __init__(self, archs: list[str], n_classes: int = 10, c: int = 8, seed: int = 0, matmul: bool = False):
        super().__init__()
        g = len(archs)
        self.archs, self.c, self.n_classes = list(archs), c, n_classes
        self.stem = GroupedConv(g, g * c, 3, padding=1, bias=False, groups=g)
        self.stem_bn = nn.BatchNorm2d(g * c)
        self.convs = nn.ModuleDict()
        for cell in (1, 2):
            for e in range(len(nasbench.EDGES)):
                for name, k in self.CONVS.items():
                    key = f"{cell}_{e}_{name}"
                    self.convs[key] = nn.Sequential(nn.ReLU(), GroupedConv(g * c, g * c, k, padding=k // 2,
                                                                              bias=False, groups=g),
                                                    nn.BatchNorm2d(g * c))
        self.head_bn = nn.BatchNorm2d(g * c)
        self.head_w = nn.Parameter(torch.empty(g, c, n_classes))
        self.head_b = nn.Parameter(torch.empty(g, n_classes))
        ops = [nasbench.parse(a) for a in archs]
        # mask[op][e] : (G,) 1 where network g has operation op on edge e
        self.register_buffer("mask", torch.tensor([[[float(o[e] == op) for o in ops] for e in range(6)]
                                                   for op in nasbench.OPS]))
        self.used = [sorted({o[e] for o in ops} - {"none"}) for e in range(6)]
        self.alone = [len({o[e] for o in ops}) == 1 for e in range(6)]  # every network has the same op here
        self._init(seed)
        for m in self.modules():
            if isinstance(m, GroupedConv):
                m.matmul = matmul

    def _layout(self):
        """(parameter, fan_in) in the fixed per-network order of the initialisation."""
        yield self.stem.weight, 9
        for seq in self.convs.values():
            yield seq[1].weight, self.c * seq[1].kernel_size[0] ** 2
        yield self.head_w, self.c
        yield self.head_b, self.c

    @torch.no_grad()
    def _init(self, seed: int):
        # PyTorch's default conv / linear initialisation, uniform(+-1 / sqrt(fan_in)), one network's
        # worth drawn from the seed and given to every network
        g = len(self.archs)
        shapes = [(p.shape[0] // g, *p.shape[1:]) if p.dim() == 4 else tuple(p.shape[1:]) for p, _ in self._layout()]
        draw = torch.rand(sum(int(np.prod(s)) for s in shapes), generator=torch.Generator().manual_seed(seed))
        offset = 0
        for (p, fan_in), shape in zip(self._layout(), shapes):
            n = int(np.prod(shape))
            u = ((draw[offset:offset + n] * 2 - 1) / fan_in ** 0.5).reshape(shape)
            offset += n
            p.copy_(u.repeat(g, *([1] * (p.dim() - 1))) if p.dim() == 4 else u.expand_as(p))

    def _cell(self, cell: int, x: torch.Tensor) -> torch.Tensor:
        def scale(t, op, e):  # weight network g's channels by its mask
            m = self.mask[nasbench.OPS.index(op), e].repeat_interleave(self.c)
            return t * m.view(1, -1, 1, 1)

        nodes = [x]
        e = 0
        for j in (1, 2, 3):
            out = torch.zeros_like(x)
            for i in range(j):
                src = nodes[i]
                for op in self.used[e]:  # operations no network of the batch has on this edge are skipped
                    if op == "skip_connect":
                        y = src
                    elif op == "avg_pool_3x3":
                        y = nn.functional.avg_pool2d(src, 3, 1, 1, count_include_pad=False)
                    else:
                        y = self.convs[f"{cell}_{e}_{op}"](src)
                    out = out + (y if self.alone[e] else scale(y, op, e))
                e += 1
            nodes.append(out)
        return nodes[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g = x.shape[:2]
        x = self._cell(1, self.stem_bn(self.stem(x.reshape(b, g, *x.shape[-2:]))))
        x = self._cell(2, nn.functional.avg_pool2d(x, 2))
        x = nn.functional.relu(self.head_bn(x)).mean((2, 3)).view(b, g, self.c)
        return torch.einsum("bgc,gck->bgk", x, self.head_w) + self.head_b
