"""DiffusionNAG's networks: the graph score network and the dataset-aware accuracy predictor.

The score network follows the official ``models/cate.py`` + ``models/transformer.py`` (CATE's graph
encoder), the NAS-Bench-201 tree's score network:

* node features: the (noised) operation matrix ``X`` (B, 8, 7) through a linear "semantic embedding"
  scaled by sqrt(d); a sinusoidal node-position encoding; a time embedding (sinusoidal embedding of
  the VE-SDE's sigma -> Linear(d, 4d) -> SiLU -> Linear(4d, d)) added to every node;
* a pre-LayerNorm transformer encoder whose attention is masked by the cell's fixed adjacency made
  transitive (node i attends to the nodes it reaches, ``aug_mask(..., 'floyed')``; a row with no
  reachable node attends uniformly, as the official ``masked_fill(-1e9)`` does: :func:`masked_attention`);
* the layer-normed outputs of every layer concatenated, then a 3-layer ELU MLP.

:class:`ScoreNet` returns the score ``s(X_t, sigma)`` per node and operation, the encoder's output
divided by sigma (score_sde's ``scale_by_sigma`` for VE models; the official CATE outputs the score
unscaled and trains 250k iterations, a budget this CPU does not have).

:class:`AccuracyPredictor` is **not** the official NAS-Bench-201 predictor. The official
NAS-Bench-201 config (``configs/tr_meta_surrogate.py``, ``model.name = 'MetaNeuralPredictor'``,
``models/digcn_meta.py``) reads a cell with a *directed graph convolutional network*: 4
directed-GCN layers (hidden 144, from the 7 one-hot operations; each layer averages the ReLU of a
forward and a backward row-normalised adjacency propagation, dropout 0.1), mean pooling over the
nodes, the time embedding (width 144) added after pooling, then Linear(144, 128), concatenated
with the task encoding and read by Linear(184, 32) -> Tanh -> Linear(32, 1). The studio's predictor
instead follows the official ``MetaPredictorCATE`` (``models/cate.py``; the predictor the
*MobileNetV3* tree's config selects): the same transformer graph encoder as the score network
(its own weights), its per-node output flattened through a 2-layer ELU MLP (the architecture code,
112 values), the task's data encoded with two set poolings (intra-class, then inter-class; a
Set-Transformer SAB + PMA each, "sabPF"), Linear(168, 32) -> Tanh -> Linear(32, 1) on the
concatenation. Both official predictors share the task encoder, the head and the training on noised
cells; they differ in how the cell is read (a transformer with reachability-masked attention vs a
directed GCN).

The VE-SDE these networks are trained on (its sigma schedule) is :mod:`studio.nets.ve_sde`, kept
apart because it is plain torch: the Architectures tab needs it before diffusers is imported.

Deviations (stated in docs/nag.md): the predictor's cell reader is CATE's transformer, not the
NAS-Bench-201 directed GCN (above); 3 transformer layers of width 32 and 4 heads instead of 12 x 64
x 8 (the space has 8 nodes; sampling 1,000 steps must stay fast on a CPU); the score scaled by
1/sigma; the set encoder reads the task's raw 8 x 8 digits (64 values) rather than ResNet-18
features; no dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from studio.data import nasbench
from studio.nets.sets import SetPool


def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """The official ``get_timestep_embedding`` (sinusoidal, as in DDPM's transformer code)."""
    half = dim // 2
    dtype = t.dtype if t.is_floating_point() else torch.float32  # float64 where a gradient check runs in it
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=t.device) * -(math.log(max_positions) / (half - 1)))
    emb = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([emb.sin(), emb.cos()], 1)


def reach_mask() -> torch.Tensor:
    """(8, 8) 1 where node j is reachable from node i along the fixed adjacency (Floyd closure)."""
    r = torch.from_numpy(nasbench.adjacency()).bool()
    for k in range(len(r)):
        r = r | (r[:, k:k + 1] & r[k:k + 1, :])
    return r


def masked_attention(attn: nn.MultiheadAttention, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Self-attention of ``h`` (B, N, d) with ``attn``'s weights, node i attending to the nodes j with
    ``keep[i, j]``, the scores masked as the official transformer does (``masked_fill(mask == 0, -1e9)``
    before the softmax): a row with nothing to attend (the output node) attends uniformly, and no
    gradient flows through its scores.

    Written out rather than ``attn(h, h, h, attn_mask=bias)``, which computes the same forward: on a
    fully masked row, torch's CPU scaled-dot-product kernel (torch 2.13, the flash path taken with
    ``need_weights=False``) returns wrong gradients (``tests/test_nag.py`` measures them against
    float64), and its math path lets a gradient through that row's scores, which ``masked_fill``
    does not. The guidance gradient of DiffusionNAG and the training of both networks go through here.
    """
    b, n, d = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // heads)
    weights = scores.masked_fill(~keep, -1e9).softmax(-1)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)  # its weights; see masked_attention
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + masked_attention(self.attn, self.norm1(x), keep)
        return x + self.ff(self.norm2(x))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class GraphEncoder(nn.Module):
    """Operation matrix + time -> per-node features (B, 8, n_vocab), as CATE's encoder + final MLP."""

    def __init__(self, d_model: int = 32, n_layers: int = 3, n_heads: int = 4, d_ff: int = 64):
        super().__init__()
        n_vocab, n_nodes = len(nasbench.VOCAB), nasbench.N_NODES
        self.d = d_model
        self.embed = nn.Linear(n_vocab, d_model)
        pos = timestep_embedding(torch.arange(n_nodes), d_model)
        self.register_buffer("pos", pos)
        self.time1, self.time2 = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        # 0 where attended, -1e9 elsewhere: kept as the saved weights' buffer; the mask is bias == 0
        self.register_buffer("bias", torch.where(reach_mask(), 0.0, -1e9))
        self.final = _mlp([n_layers * d_model, 2 * n_layers * d_model, 2 * n_layers * d_model, n_vocab])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) * math.sqrt(self.d) + self.pos
        h = h + self.time2(F.silu(self.time1(timestep_embedding(sigma, self.d))))[:, None]
        outs, keep = [], self.bias == 0
        for block, norm in zip(self.blocks, self.norms):
            h = block(h, keep)
            outs.append(norm(h))
        return self.final(torch.cat(outs, -1))


class ScoreNet(ModelMixin, ConfigMixin):
    """s_theta(X_t, sigma): the VE-SDE score of the operation matrix, (B, 8, 7)."""

    @register_to_config
    def __init__(self, d_model: int = 32, n_layers: int = 3, n_heads: int = 4, d_ff: int = 64):
        super().__init__()
        self.encoder = GraphEncoder(d_model, n_layers, n_heads, d_ff)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # the output divided by sigma (score_sde's ``scale_by_sigma``): the score grows as 1 / sigma
        return self.encoder(x, sigma) / sigma[:, None, None]


class AccuracyPredictor(ModelMixin, ConfigMixin):
    """f_phi(X_t, sigma, D): accuracy of a (noised) cell on the task whose data is ``D``.

    The official ``MetaPredictorCATE`` layout (a transformer reads the cell), not NAS-Bench-201's
    directed-GCN ``MetaNeuralPredictor`` (4 layers, hidden 144): a stated deviation (module docstring).

    ``D`` is (n_classes, n_per_class, 64): a few images of each of the task's classes.
    """

    @register_to_config
    def __init__(self, d_model: int = 32, n_layers: int = 3, n_heads: int = 4, d_ff: int = 64, nz: int = 56,
                 hs: int = 32, d_data: int = 64):
        super().__init__()
        self.encoder = GraphEncoder(d_model, n_layers, n_heads, d_ff)
        rdim = nasbench.N_NODES * len(nasbench.VOCAB)
        self.arch = _mlp([rdim, 2 * rdim, 2 * rdim])
        self.intra = SetPool(d_data, nz, nz)
        self.inter = SetPool(nz, nz, nz)
        self.head = nn.Sequential(nn.Linear(nz + 2 * rdim, hs), nn.Tanh(), nn.Linear(hs, 1))

    def encode_task(self, data: torch.Tensor) -> torch.Tensor:
        """(n_classes, n_per_class, d_data) -> (nz,): intra-class pooling, then inter-class."""
        protos = self.intra(data)
        return self.inter(protos[None])[0]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """``task``: (nz,) from :meth:`encode_task` or (B, nz). Returns (B,) predicted accuracy."""
        a = self.arch(self.encoder(x, sigma).flatten(1))
        t = task.expand(len(x), -1) if task.dim() == 1 else task
        return self.head(torch.cat([t, a], 1))[:, 0]
