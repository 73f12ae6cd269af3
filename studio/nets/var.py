"""VAR's two networks at toy scale (Tian et al., NeurIPS 2024; official ``FoundationVision/VAR``).

:class:`MultiScaleVQ` is the multi-scale residual quantiser of ``models/quant.py`` on a small conv
auto-encoder: an image's latent ``f`` (B, C, h, w) is written as K token maps r_1..r_K of sizes
p_1 < ... < p_K = h; at scale k the residual is area-downsampled to p_k x p_k, quantised to the
nearest codebook vector, bicubic-upsampled back, mixed by phi_k(h) = (1 - m) h + m conv3x3(h)
(m = 0.5, four partially shared phi) and added to f_hat. The VQ loss is the official
beta ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2 averaged over scales, with a straight-through f_hat.

:class:`NextScaleTransformer` predicts every token of scale k from all tokens of scales < k (the
block-causal mask): its input is [SOS] followed by the area-downsampled f_hat of scales <= k at
size p_{k+1} (the official ``idxBl_to_var_input``), plus a level embedding and absolute positions.
It is text-conditioned as Infinity (the ARBooth base) is: SOS is the pooled caption embedding and
every block cross-attends to the caption's token embeddings, so selective tuning of the
cross-attention and FFN layers (ARBooth) has its layers to tune.

Deviations (docs/subject.md): a conv auto-encoder of a few hundred thousand parameters trained with
L2 and the VQ loss only (the official tokenizer's compound loss and training code are not
released); plain pre-LayerNorm blocks with scaled dot-product attention (the official model adds
AdaLN on the class and L2-normalised attention); dead codes are reset to encoder residuals while
training (:meth:`MultiScaleVQ.reset_dead_codes`), the fix reproducers use for coarse-scale collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _res_block(c: int) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                         nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = _res_block(c)

    def forward(self, x):
        return x + self.body(x)


class Phi(nn.Conv2d):
    """phi(h) = (1 - m) h + m conv3x3(h), the official ``quant.Phi`` (m = ``quant_resi`` = 0.5)."""

    def __init__(self, channels: int, mix: float):
        super().__init__(channels, channels, 3, padding=1)
        self.mix = abs(mix)

    def forward(self, h):
        return h.mul(1 - self.mix) + super().forward(h).mul(self.mix)


class MultiScaleVQ(ModelMixin, ConfigMixin):
    """Encoder (B, 3, H, W) in [-1, 1] -> (B, C, H/4, W/4); residual quantiser over ``scales``; decoder."""

    @register_to_config
    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64), latent_channels: int = 16,
                 codebook_size: int = 256, scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8), beta: float = 0.25,
                 phi_mix: float = 0.5, n_phi: int = 4):
        super().__init__()
        c1, c2 = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), _Residual(c1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), _Residual(c2),
            nn.Conv2d(c2, c2, 4, stride=2, padding=1), _Residual(c2),
            nn.GroupNorm(8, c2), nn.SiLU(), nn.Conv2d(c2, latent_channels, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c2, 3, padding=1), _Residual(c2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c2, 3, padding=1), _Residual(c2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, 3, padding=1), _Residual(c1),
            nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, in_channels, 3, padding=1))
        self.codebook = nn.Embedding(codebook_size, latent_channels)
        self.codebook.weight.data.uniform_(-1 / codebook_size, 1 / codebook_size)
        self.phis = nn.ModuleList(Phi(latent_channels, phi_mix) for _ in range(n_phi))
        # the official PhiPartiallyShared: phi ticks evenly inside (0, 1); scale k takes the nearest to k / (K - 1)
        ticks = torch.linspace(1 / 3 / n_phi, 1 - 1 / 3 / n_phi, n_phi)
        K = len(scales)
        self._phi_of = [int((ticks - k / max(K - 1, 1)).abs().argmin()) for k in range(K)]

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.config.scales)

    @property
    def tokens(self) -> int:
        """L = sum p_k^2, the length of one image's token sequence."""
        return sum(p * p for p in self.scales)

    def phi(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.phis[self._phi_of[k]](h)

    def _lookup(self, rest: torch.Tensor) -> torch.Tensor:
        """Nearest codebook index of every position of ``rest`` (B, C, p, p) -> (B, p, p)."""
        B, C, p, _ = rest.shape
        flat = rest.permute(0, 2, 3, 1).reshape(-1, C)
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.weight.T
             + self.codebook.weight.pow(2).sum(1)[None])
        return d.argmin(1).view(B, p, p)

    def _upsampled(self, k: int, idx: torch.Tensor, size: int) -> torch.Tensor:
        """phi_k(upsample_bicubic(e[r_k])), (B, C, size, size)."""
        h = self.codebook(idx).permute(0, 3, 1, 2)
        if h.shape[-1] != size:
            h = F.interpolate(h, size=(size, size), mode="bicubic")
        return self.phi(k, h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat)

    def quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The official ``VectorQuantizer2.forward``: (straight-through f_hat, per-scale indices, vq loss)."""
        beta, K = self.config.beta, len(self.scales)
        f_ng = f.detach()
        rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        indices, loss = [], f.new_zeros(())
        for k, p in enumerate(self.scales):
            small = F.interpolate(rest, size=(p, p), mode="area") if k != K - 1 else rest
            idx = self._lookup(small)
            h = self._upsampled(k, idx, f.shape[-1])
            f_hat = f_hat + h
            rest = rest - h.detach()
            indices.append(idx)
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
        return (f_hat.detach() - f_ng) + f, indices, loss / K

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> K index maps (B, p_k, p_k)."""
        return self.quantize(self.encode(x))[1]

    def f_hat(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """The latent the token maps build (sum of phi_k of each upsampled scale)."""
        size = self.scales[-1]
        return sum(self._upsampled(k, idx, size) for k, idx in enumerate(indices))

    def teacher_inputs(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """The official ``idxBl_to_var_input``: for k < K, f_hat of scales <= k area-downsampled to
        p_{k+1}, flattened: (B, L - 1, C)."""
        size, out = self.scales[-1], []
        f_hat = None
        for k, idx in enumerate(indices[:-1]):
            h = self._upsampled(k, idx, size)
            f_hat = h if f_hat is None else f_hat + h
            nxt = self.scales[k + 1]
            out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, 1)

    @torch.no_grad()
    def reset_dead_codes(self, used: torch.Tensor, residuals: torch.Tensor, generator=None) -> int:
        """Re-initialise the codes ``used`` marks False to random rows of ``residuals`` (N, C). Returns how many."""
        dead = (~used).nonzero().flatten()
        if len(dead) and len(residuals):
            pick = torch.randint(len(residuals), (len(dead),), generator=generator)
            self.codebook.weight.data[dead] = residuals[pick].to(self.codebook.weight.dtype)
        return int(len(dead))


class _Attention(nn.Module):
    """Multi-head attention; ``kv_dim`` other than ``dim`` makes it cross-attention."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        B, N, D = x.shape
        return x.view(B, N, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, context=None, mask=None, cache: dict | None = None):
        q = self.split(self.q(x))
        k, v = (self.split(t) for t in self.kv(x if context is None else context).chunk(2, -1))
        if cache is not None:  # self-attention with a KV cache: earlier scales' keys and values
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LN: self-attention (block-causal), cross-attention to the caption, FFN."""

    def __init__(self, dim: int, heads: int, text_dim: int, mlp_ratio: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.cross_attn = _Attention(dim, heads, kv_dim=text_dim)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x, text, text_mask, self_mask=None, cache=None):
        x = x + self.attn(self.ln1(x), mask=self_mask, cache=cache)
        x = x + self.cross_attn(self.ln2(x), context=text, mask=text_mask)
        return x + self.ffn(self.ln3(x))


class NextScaleTransformer(ModelMixin, ConfigMixin):
    """Logits (B, L, V) of every token of every scale, each from the tokens of coarser scales only."""

    @register_to_config
    def __init__(self, codebook_size: int = 256, latent_channels: int = 16,
                 scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8), dim: int = 128, depth: int = 4, heads: int = 4,
                 text_dim: int = 384, mlp_ratio: float = 4.0):
        super().__init__()
        self.sos = nn.Linear(text_dim, dim)                       # SOS = pooled caption + its position
        self.pos_start = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.word_embed = nn.Linear(latent_channels, dim)
        L = sum(p * p for p in scales)
        self.pos = nn.Parameter(torch.randn(1, L, dim) * 0.02)     # absolute position of each token
        self.level = nn.Embedding(len(scales), dim)                # which scale a token belongs to
        self.blocks = nn.ModuleList(Block(dim, heads, text_dim, mlp_ratio) for _ in range(depth))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)
        levels = torch.cat([torch.full((p * p,), k) for k, p in enumerate(scales)])
        self.register_buffer("levels", levels, persistent=False)
        # block-causal: a token sees every token of its own scale and the coarser ones
        self.register_buffer("causal", levels[:, None] >= levels[None, :], persistent=False)

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.config.scales)

    def embed(self, pooled: torch.Tensor, inputs: torch.Tensor | None, start: int) -> torch.Tensor:
        """Token embeddings of positions start.. : SOS (only at 0) then ``inputs`` (B, n, C)."""
        parts = [] if start else [(self.sos(pooled)[:, None] + self.pos_start)]
        if inputs is not None and inputs.shape[1]:
            parts.append(self.word_embed(inputs))
        x = torch.cat(parts, 1)
        end = start + x.shape[1]
        return x + self.pos[:, start:end] + self.level(self.levels[start:end])[None]

    @staticmethod
    def _text_mask(mask: torch.Tensor) -> torch.Tensor:
        return mask.bool()[:, None, None, :]  # (B, 1, 1, T): padded word pieces are not attended

    def forward(self, inputs: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``inputs`` (B, L - 1, C) from :meth:`MultiScaleVQ.teacher_inputs` -> (B, L, V)."""
        x = self.embed(pooled, inputs, 0)
        text_mask = self._text_mask(encoder_attention_mask)
        for block in self.blocks:
            x = block(x, encoder_hidden_states, text_mask, self.causal)
        return self.head(self.ln_out(x))

    def step(self, k: int, inputs: torch.Tensor | None, encoder_hidden_states: torch.Tensor,
             encoder_attention_mask: torch.Tensor, pooled: torch.Tensor, caches: list[dict]) -> torch.Tensor:
        """Sampling with a KV cache: the logits (B, p_k^2, V) of scale k, given scale k's inputs
        (None for k = 0: SOS). The caches hold every coarser scale, so no mask is needed."""
        start = sum(p * p for p in self.scales[:k])
        x = self.embed(pooled, inputs, start)
        text_mask = self._text_mask(encoder_attention_mask)
        for block, cache in zip(self.blocks, caches):
            x = block(x, encoder_hidden_states, text_mask, None, cache)
        return self.head(self.ln_out(x))

    def layer_groups(self) -> dict[str, list[str]]:
        """Parameter names by part: ``cross_attn``, ``ffn`` (ARBooth's selective tuning) and ``rest``."""
        groups: dict[str, list[str]] = {"cross_attn": [], "ffn": [], "rest": []}
        for name, _ in self.named_parameters():
            part = "cross_attn" if ".cross_attn." in name else "ffn" if ".ffn." in name else "rest"
            groups[part].append(name)
        return groups


def scale_slices(scales: tuple[int, ...]) -> list[slice]:
    """Where each scale's tokens sit in the flat sequence of length L."""
    out, start = [], 0
    for p in scales:
        out.append(slice(start, start + p * p))
        start += p * p
    return out


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear weights and zero biases (the official ``init_weights``, small scale)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if isinstance(module, NextScaleTransformer):
        for block in module.blocks:  # residual branches start small (depth-scaled), as GPT-2 / VAR do
            for lin in (block.attn.proj, block.cross_attn.proj, block.ffn[-1]):
                lin.weight.data.div_(math.sqrt(2 * len(module.blocks)))
