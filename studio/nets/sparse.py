"""SaRA's sparse weights (Hu et al., ICLR 2025): a few entries of a frozen weight train, the rest stay.

:class:`SparseEntries` is a ``torch.nn.utils.parametrize`` parametrisation that scatters its
``values`` into the frozen weight at flat positions ``index`` (the official optimizer's
``Sparse`` autograd function: forward scatters, backward gathers the weight's gradient at the
mask), so only those entries are leaf tensors with optimizer state. :func:`apply_sparse` writes a
saved set of changed entries into a copy of a network (a saved SaRA model). The selection, the
regulariser and the re-selection are in :mod:`studio.train.tuning`.
"""

from __future__ import annotations

import copy

import torch


class SparseEntries(torch.nn.Module):
    """A parametrisation of one weight: the frozen tensor with ``values`` scattered at ``index``
    (flat positions). The gradient of ``values`` is the weight's gradient gathered at ``index``."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, keep_sign: bool = True):
        super().__init__()
        self.register_buffer("index", mask.flatten().nonzero().squeeze(1))
        start = weight.detach().flatten()[self.index].clone()
        self.values = torch.nn.Parameter(start if keep_sign else start.abs())
        self.register_buffer("start", start.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten().scatter(0, self.index, self.values).view_as(weight)


def apply_sparse(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A frozen float copy of ``unet`` with a saved SaRA :meth:`SaraWeights.state` written in."""
    net = copy.deepcopy(unet).float().requires_grad_(False)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for key, index in state.items():
            if not key.endswith(".index"):
                continue
            name = key[: -len(".index")]
            if name not in params or f"{name}.values" not in state:
                raise ValueError(f"the saved entries do not fit this network ({name})")
            flat = params[name].view(-1)
            if index.numel() and int(index.max()) >= flat.numel():
                raise ValueError(f"the saved entries do not fit this network ({name})")
            flat[index.long()] = state[f"{name}.values"].to(flat.dtype)
    return net.eval()
