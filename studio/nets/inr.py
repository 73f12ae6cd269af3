"""DDMI's D2C-VAE at toy scale (Park et al., ICLR 2024; official ``mlvlab/DDMI``).

An image is encoded to a small latent ``z``; the decoder turns ``z`` into *basis fields*: feature
planes at three resolutions (coarse, middle, fine: 8, 16 and 32 for 32 x 32 images, the official
64 / 128 / 256 for 256 x 256). A coordinate ``c`` in (-1, 1)^2 reads each plane by bilinear
interpolation (``grid_sample``, border padding): its adaptive positional embeddings PE_k(c). One
shared MLP maps them to a colour, taking the coarse PE at its first block, the middle one at the
second and the fine one at the third (the official "hierarchically decomposed" MLP,
``models/d2c_vae/mlp.py``): no raw coordinates are input. The MLP is StyleGAN2 modulated 1 x 1
convolutions (demodulated, leaky-ReLU with gain sqrt 2, residual / sqrt 2) whose style is an MLP of
the sinusoidal embedding of the *scale injection* ``si`` = 32 / R for a render at R pixels; ``si``
is also appended to every block's input as two constant channels, as the official code does.
Because the planes are continuous, the same function renders at any size: that is the claim the
Resolution tab tests.

``pe`` switches the positional embedding, for the ablations that isolate the paper's idea:

* ``"planes"``: the method (three planes, one per MLP block);
* ``"fine"``: one fine plane only, fed to all three blocks (no multi-resolution decomposition);
* ``"fourier"``: a fixed Fourier PE of ``c`` (sin / cos at 2^k pi, k < ``fourier_octaves``) at every
  block, and the latent *modulates* the MLP (its flattened ``z`` through an MLP, added to the style):
  the "generate the INR's weights, keep a fixed PE" family the paper argues against.

``scale_injection=False`` renders with ``si = 1`` at every size (trained that way too).

Deviations from the official code (docs/resolution.md): a diffusers LDM ``Encoder`` of 32 / 64 / 64
channels with one res-block per level (official: 128 / 256 / 512, three per level); latent 8 x 8 x 8
for 32 x 32 (official 64 x 64 x 64 for 256 x 256: the same factor 4); MLP width 64 (official 256);
two modulated convolutions per block, not three; no per-pixel noise injection (the official layers
learn its weight from 0; without it a render is the same function at every resolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, Encoder
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

PE_MODES = ("planes", "fine", "fourier")


def pixel_grid(size: int, offset: tuple[int, int] = (0, 0), crop: int | None = None) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates (x, y) in (-1, 1) of a ``size`` x ``size`` image, the
    official convention (+-(R - 1) / R at the edges); ``crop`` x ``crop`` pixels from ``offset``
    (left, top) when given: the coordinates of a crop of a larger render."""
    centres = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1
    ox, oy = offset
    n = crop or size
    ys, xs = torch.meshgrid(centres[oy:oy + n], centres[ox:ox + n], indexing="ij")
    return torch.stack([xs, ys], dim=-1)


class ModulatedLinear(nn.Module):
    """StyleGAN2's modulated 1 x 1 convolution on per-coordinate features: (B, C_in, N) -> (B, C_out, N).
    The style scales the input channels, the weight is demodulated per output channel (unless
    ``demodulate=False``, as ToRGB), then bias and (optionally) leaky-ReLU 0.2 with gain sqrt 2."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, demodulate: bool = True, activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.gain = 1 / math.sqrt(c_in)  # equalised learning rate
        self.affine = nn.Linear(style_dim, c_in)
        nn.init.ones_(self.affine.bias)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.demodulate, self.activate = demodulate, activate

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # StyleGAN2's unfused form: scale the input, one shared matmul, demodulate the output (the
        # same numbers as modulating each sample's weight, without a weight per sample)
        s = self.affine(style)  # (B, in)
        w = self.gain * self.weight
        out = torch.matmul(w, x * s[:, :, None])
        if self.demodulate:
            out = out * torch.rsqrt(s.pow(2) @ w.pow(2).T + 1e-8)[:, :, None]
        out = out + self.bias[None, :, None]
        return F.leaky_relu(out, 0.2) * math.sqrt(2) if self.activate else out


class StyledBlock(nn.Module):
    """``convs`` modulated 1 x 1 convolutions with a residual (a 1 x 1 projection when the widths
    differ), summed and divided by sqrt 2."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, convs: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(ModulatedLinear(c_in if i == 0 else c_out, c_out, style_dim) for i in range(convs))
        self.skip = nn.Conv1d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = conv(h, style)
        return (h + self.skip(x)) / math.sqrt(2)


class HierarchicalMLP(nn.Module):
    """The official image MLP: block k takes [h; PE_k(c); si, si] (block 1 no h), a fourth block,
    then a non-demodulated ToRGB; style = MLP(sinusoidal(si)) (+ a latent style in the Fourier ablation)."""

    def __init__(self, pe_channels: int, width: int, convs: int = 2):
        super().__init__()
        dim = width // 4
        self.style_dim = dim
        self.scale_mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList([
            StyledBlock(pe_channels + 2, width, width, convs),
            StyledBlock(width + pe_channels + 2, width, width, convs),
            StyledBlock(width + pe_channels + 2, width, width, convs),
            StyledBlock(width, width, width, convs),
        ])
        self.to_rgb = ModulatedLinear(width, 3, width, demodulate=False, activate=False)

    def scale_style(self, si: torch.Tensor) -> torch.Tensor:
        """(B,) scale injections -> (B, width) styles (the official ``time_mlp`` on ``SinusoidalPosEmb``)."""
        emb = get_timestep_embedding(si, self.style_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        return self.scale_mlp(emb)

    def forward(self, pes: list[torch.Tensor], si: torch.Tensor, extra_style: torch.Tensor | None = None) -> torch.Tensor:
        """``pes``: three (B, C, N) embeddings (coarse, middle, fine); ``si``: (B,) -> (B, 3, N)."""
        style = self.scale_style(si)
        if extra_style is not None:
            style = style + extra_style
        si_map = si[:, None, None].expand(-1, 2, pes[0].shape[-1])
        h = self.blocks[0](torch.cat([pes[0], si_map], 1), style)
        h = self.blocks[1](torch.cat([h, pes[1], si_map], 1), style)
        h = self.blocks[2](torch.cat([h, pes[2], si_map], 1), style)
        h = self.blocks[3](h, style)
        return self.to_rgb(h, style)


class PlaneDecoder(nn.Module):
    """z (B, C, h, w) -> feature planes at h, 2h, 4h (coarse, middle, fine; 1 x 1 heads on the
    8 x 8 and 16 x 16 features, the output convolution at 32 x 32, as the official decoder's
    ``hdbf_resolutions`` heads and ``conv_out``). ``levels``: which planes to make."""

    def __init__(self, latent_channels: int, channels: tuple[int, int, int], plane_channels: int,
                 levels: tuple[int, ...] = (0, 1, 2)):
        super().__init__()
        c0, c1, c2 = channels
        self.levels = levels
        self.conv_in = nn.Conv2d(latent_channels, c0, 3, padding=1)
        self.res = nn.ModuleList([ResnetBlock2D(in_channels=c0, out_channels=c0, temb_channels=None, groups=8),
                                  ResnetBlock2D(in_channels=c1, out_channels=c1, temb_channels=None, groups=8),
                                  ResnetBlock2D(in_channels=c2, out_channels=c2, temb_channels=None, groups=8)])
        self.up = nn.ModuleList([nn.Conv2d(c0, c1, 3, padding=1), nn.Conv2d(c1, c2, 3, padding=1)])
        self.heads = nn.ModuleDict({
            str(k): nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, plane_channels, 1 if k < 2 else 3,
                                                                          padding=0 if k < 2 else 1))
            for k, c in zip(range(3), channels) if k in levels})

    def forward(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        h = self.res[0](self.conv_in(z), None)
        planes = {}
        for k in range(3):
            if k > 0:
                h = self.res[k](self.up[k - 1](F.interpolate(h, scale_factor=2.0, mode="nearest")), None)
            if k in self.levels:
                planes[k] = self.heads[str(k)](h)
        return planes


def fourier_features(coords: torch.Tensor, octaves: int) -> torch.Tensor:
    """(B, N, 2) -> (B, 4 * octaves, N): sin and cos of 2^k pi c for both coordinates."""
    freqs = math.pi * 2.0 ** torch.arange(octaves, dtype=coords.dtype, device=coords.device)
    angles = coords[..., None] * freqs  # (B, N, 2, K)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(2).transpose(1, 2)


class D2CVAE(ModelMixin, ConfigMixin):
    """Encoder to a Gaussian latent, decoder to basis fields, and the MLP that renders them at any size."""

    @register_to_config
    def __init__(self, latent_channels: int = 8, encoder_channels: tuple[int, ...] = (32, 64, 64),
                 decoder_channels: tuple[int, int, int] = (64, 64, 32), plane_channels: int = 16,
                 mlp_width: int = 64, mlp_convs: int = 2, pe: str = "planes", scale_injection: bool = True,
                 fourier_octaves: int = 5, image_size: int = 32):
        super().__init__()
        if pe not in PE_MODES:
            raise ValueError(f"pe must be one of {PE_MODES}, got {pe!r}")
        self.encoder = Encoder(in_channels=3, out_channels=latent_channels, block_out_channels=encoder_channels,
                               down_block_types=("DownEncoderBlock2D",) * len(encoder_channels), layers_per_block=1,
                               norm_num_groups=8, double_z=True, mid_block_add_attention=False)
        latent_size = image_size // 2 ** (len(encoder_channels) - 1)
        if pe == "fourier":
            pe_channels = 4 * fourier_octaves
            self.latent_style = nn.Sequential(nn.Flatten(), nn.Linear(latent_channels * latent_size ** 2, mlp_width),
                                              nn.GELU(), nn.Linear(mlp_width, mlp_width))
        else:
            pe_channels = plane_channels
            self.decoder = PlaneDecoder(latent_channels, decoder_channels, plane_channels,
                                        levels=(0, 1, 2) if pe == "planes" else (2,))
        self.mlp = HierarchicalMLP(pe_channels, mlp_width, mlp_convs)

    def encode(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        """(B, 3, 32, 32) in [-1, 1] -> the posterior q(z | x) (``.sample(generator)``, ``.mean``, ``.kl()``)."""
        return DiagonalGaussianDistribution(self.encoder(images))

    def basis(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The three planes the MLP reads (coarse, middle, fine; the fine one thrice in the ``fine`` ablation)."""
        planes = self.decoder(z)
        return [planes[k] for k in (0, 1, 2)] if self.config.pe == "planes" else [planes[2]] * 3

    def scale_injection(self, size: int | torch.Tensor, batch: int) -> torch.Tensor:
        """(B,) si = image_size / size (1 at every size with ``scale_injection=False``)."""
        if not self.config.scale_injection:
            return torch.ones(batch, device=self.device)
        size = torch.as_tensor(size, dtype=torch.float32, device=self.device)
        return (self.config.image_size / size).expand(batch).clone() if size.dim() == 0 else self.config.image_size / size

    def query(self, z: torch.Tensor, coords: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
        """Colours at ``coords`` (B, H, W, 2) or (H, W, 2) in (-1, 1), scale injections ``si`` (B,):
        (B, 3, H, W) in about [-1, 1]."""
        b = z.shape[0]
        if coords.dim() == 3:
            coords = coords.expand(b, *coords.shape)
        h, w = coords.shape[1:3]
        coords = coords.to(z.device, z.dtype)
        if self.config.pe == "fourier":
            pe = fourier_features(coords.reshape(b, h * w, 2), self.config.fourier_octaves)
            out = self.mlp([pe, pe, pe], si, extra_style=self.latent_style(z))
        else:
            pes = [F.grid_sample(p, coords, mode="bilinear", padding_mode="border", align_corners=False).flatten(2)
                   for p in self.basis(z)]
            out = self.mlp(pes, si)
        return out.view(b, 3, h, w)

    def render(self, z: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The latent's function rendered at ``size`` x ``size`` pixels (default: the training size)."""
        size = size or self.config.image_size
        return self.query(z, pixel_grid(size), self.scale_injection(size, z.shape[0]))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction at the training size from a posterior sample."""
        return self.render(self.encode(images).sample(generator))
