"""Networks for generating a classifier's weights: the classifier itself, p-diff's and D2NWG's.

* The **classifier** every zoo model shares: a tiny CNN on (N, 1, 16, 16) digits in [-1, 1],
  conv 3x3 stride 2 (1 -> 8) -> ReLU -> conv 3x3 stride 2 (8 -> 8) -> ReLU -> Linear(128, 10), 1,954
  parameters, handled as one flat vector (:data:`LAYOUT` fixes the order) so that a generator's
  output *is* a model. :func:`logits` runs one vector, :func:`batched_logits` K of them at once;
  :class:`TinyCNN` is the same network as an ``nn.Module`` (its state_dict keys are :data:`LAYOUT`'s).
* **p-diff** (Wang et al. 2024, official ``core/module/modules/encoder.py``): :class:`ParamAutoencoder`,
  a 1-D convolutional autoencoder on the flat vector (instance norm, LeakyReLU, stride = fold rate,
  tanh at the encoder's end) trained with input noise 0.001 and latent noise (official default 0.1)
  and the latent clamped to [-1, 1]; :class:`LatentDenoiser`, the DDPM's network on its latents
  (an MLP with a sinusoidal time embedding; the official ``AE_CNN_bottleneck`` is a 1-D conv UNet).
  Deviation: 'same' padding on the stride-1 convolutions, so every length divides exactly (the
  official padding 1 with kernel 5 shortens the vector and relies on the zero padding).
* **D2NWG** (Soro et al. 2025, official ``sorobedio/DNNWG``): :class:`WeightVAE`, the flat vector
  through a Linear to a 1 x 16 x 16 map and diffusers' ``AutoencoderKL`` (as the official LDM
  encoder: Linear to 4096, 1 x 64 x 64, conv VAE to 4 x 16 x 16; here 4 x 8 x 8);
  :class:`DatasetEncoder`, a few examples per class (their image features) pooled within each class,
  then across classes (one :class:`~studio.nets.sets.SetPool` each, as the official Set Transformer);
  :class:`ConditionalLatentUNet`, diffusers' ``UNet2DModel`` on the latent with the dataset
  encoding concatenated as extra channels (the official ``concat`` conditioning).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from studio.nets.sets import SetPool

# ----------------------------------------------------------------------------- the classifier
LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1.weight", (8, 1, 3, 3)), ("conv1.bias", (8,)),
    ("conv2.weight", (8, 8, 3, 3)), ("conv2.bias", (8,)),
    ("fc.weight", (10, 128)), ("fc.bias", (10,)),
)
SIZES = tuple(math.prod(shape) for _, shape in LAYOUT)
N_PARAMS = sum(SIZES)  # 1,954
HEAD = slice(N_PARAMS - 10 * 128 - 10, N_PARAMS)  # fc.weight + fc.bias: p-diff's subset (1,290 values)


def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat (N_PARAMS,) vector as the named tensors of :data:`LAYOUT` (views, no copy)."""
    if theta.shape[-1] != N_PARAMS:
        raise ValueError(f"a classifier has {N_PARAMS} parameters, got a vector of {theta.shape[-1]}")
    return {name: part.view(shape) for (name, shape), part in zip(LAYOUT, theta.split(SIZES))}


def flatten(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The named tensors (a :class:`TinyCNN` state_dict) as one flat vector in :data:`LAYOUT` order."""
    return torch.cat([state[name].reshape(-1).float() for name, _ in LAYOUT])


def logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Class logits (N, 10) of the classifier whose flat parameters are ``theta`` on (N, 1, 16, 16) ``x``."""
    p = unflatten(theta)
    h = F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1))
    return F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])


def batched_logits(thetas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(K, N, 10): each of K flat parameter vectors (K, N_PARAMS) on the same images (N, 1, 16, 16)."""
    return torch.func.vmap(logits, in_dims=(0, None))(thetas, x)


def init_vector(generator: torch.Generator) -> torch.Tensor:
    """A random initialisation as PyTorch initialises :class:`TinyCNN` (Kaiming-uniform weights with
    a = sqrt(5), biases uniform in +-1/sqrt(fan_in)), drawn from ``generator``."""
    parts = []
    for name, shape in LAYOUT:
        fan_in = math.prod(shape[1:]) if name.endswith("weight") else math.prod(dict(LAYOUT)[name[:-4] + "weight"][1:])
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives the same bound as the bias
        parts.append((torch.rand(math.prod(shape), generator=generator) * 2 - 1) * bound)
    return torch.cat(parts)


class TinyCNN(nn.Module):
    """:func:`logits` as a module, for a downloaded model: ``TinyCNN().load_state_dict(unflatten(theta))``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 16, 16) in [-1, 1] -> (N, 10)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.flatten(1))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of timesteps (B,) (DDPM's, as diffusers' ``get_timestep_embedding``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


# ----------------------------------------------------------------------------- p-diff
class ParamAutoencoder(ModelMixin, ConfigMixin):
    """p-diff's 1-D convolutional autoencoder on flat parameter vectors (B, in_dim) -> latent (B, C, L).

    The vector is zero-padded to a multiple of ``fold ** len(enc_channels)``; each encoder layer is
    InstanceNorm, Conv(k, stride 1), LeakyReLU, InstanceNorm, Conv(fold, stride fold), LeakyReLU (tanh
    after the last); each decoder layer LeakyReLU, InstanceNorm, ConvTranspose(fold, stride fold),
    LeakyReLU, InstanceNorm, Conv(k, stride 1), ending in one channel, no tanh (official layout)."""

    @register_to_config
    def __init__(self, in_dim: int = N_PARAMS, fold: int = 3, kernel: int = 3,
                 enc_channels: tuple[int, ...] = (4, 4, 4, 4), dec_channels: tuple[int, ...] = (4, 64, 64, 8),
                 input_noise: float = 0.001, latent_noise: float = 0.1, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        depth = len(enc_channels)
        self.padded = math.ceil(in_dim / fold ** depth) * fold ** depth
        norm = nn.InstanceNorm1d  # affine=False: plain per-channel normalisation over the length
        enc, c_in = [], 1
        for i, c_out in enumerate(enc_channels):
            last = i == depth - 1
            enc.append(nn.Sequential(norm(c_in), nn.Conv1d(c_in, c_in, kernel, padding=kernel // 2), nn.LeakyReLU(),
                                     norm(c_in), nn.Conv1d(c_in, c_out, fold, stride=fold),
                                     nn.Tanh() if last else nn.LeakyReLU()))
            c_in = c_out
        dec, chans = [], list(dec_channels) + [1]
        for c_a, c_b in zip(chans[:-1], chans[1:]):
            dec.append(nn.Sequential(nn.LeakyReLU(), norm(c_a), nn.ConvTranspose1d(c_a, c_a, fold, stride=fold),
                                     nn.LeakyReLU(), norm(c_a), nn.Conv1d(c_a, c_b, kernel, padding=kernel // 2)))
        if enc_channels[-1] != dec_channels[0]:
            raise ValueError("the decoder's first width must be the encoder's last")
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.config.enc_channels[-1], self.padded // self.config.fold ** len(self.config.enc_channels)

    def normalise(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.config.shift) / self.config.scale

    def encode(self, theta: torch.Tensor) -> torch.Tensor:
        """Normalised vectors (B, in_dim) -> latents (B, C, L) in [-1, 1]."""
        x = F.pad(theta, (0, self.padded - theta.shape[-1]))[:, None]
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, L) -> normalised vectors (B, in_dim)."""
        return self.decoder(z)[:, 0, : self.config.in_dim]

    def forward(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training pass on normalised vectors: both noise augmentations (x' = 0.001 e + 0.999 x;
        z' = s e + (1 - s) z, clamped to [-1, 1]), the reconstruction."""
        noise = lambda t: torch.randn(t.shape, generator=generator, device=t.device)
        a, s = self.config.input_noise, self.config.latent_noise
        z = self.encode(a * noise(theta) + (1 - a) * theta)
        return self.decode((s * noise(z) + (1 - s) * z).clamp(-1, 1))


class LatentDenoiser(ModelMixin, ConfigMixin):
    """The DDPM's network on flattened latents: eps(z_t, t), an MLP with a sinusoidal time embedding added
    to every hidden layer. (B, C, L) -> (B, C, L)."""

    @register_to_config
    def __init__(self, channels: int = 4, length: int = 16, width: int = 256, depth: int = 3, time_dim: int = 64):
        super().__init__()
        d = channels * length
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, d))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(len(z)) if t.numel() == 1 else t  # one timestep per sample (not the first's)
        emb = self.time(timestep_embedding(t, self.config.time_dim))
        h = self.inp(z.flatten(1))
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h).view_as(z)


# ----------------------------------------------------------------------------- D2NWG
class WeightVAE(ModelMixin, ConfigMixin):
    """D2NWG's weight VAE: (B, in_dim) -> Linear -> (B, 1, side, side) -> AutoencoderKL -> latent
    (B, latent_channels, side / 2, side / 2); the decoder mirrors it. Vectors are normalised by one
    scalar ``scale`` (and ``shift``) measured on the training checkpoints."""

    @register_to_config
    def __init__(self, in_dim: int = N_PARAMS, side: int = 16, channels: tuple[int, ...] = (16, 32),
                 latent_channels: int = 4, scale: float = 1.0, shift: float = 0.0, latent_scale: float = 1.0):
        super().__init__()
        from diffusers import AutoencoderKL

        self.proj_in = nn.Linear(in_dim, side * side)
        self.proj_out = nn.Linear(side * side, in_dim)
        self.vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=tuple(channels),
                                 down_block_types=("DownEncoderBlock2D",) * len(channels),
                                 up_block_types=("UpDecoderBlock2D",) * len(channels),
                                 latent_channels=latent_channels, layers_per_block=1, norm_num_groups=8,
                                 sample_size=side)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.side // 2 ** (len(self.config.channels) - 1)
        return self.config.latent_channels, s, s

    def encode(self, theta: torch.Tensor):
        """Raw vectors (B, in_dim) -> the posterior (a diffusers ``DiagonalGaussianDistribution``)."""
        x = self.proj_in((theta - self.config.shift) / self.config.scale)
        return self.vae.encode(x.view(-1, 1, self.config.side, self.config.side)).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, s, s) -> raw vectors (B, in_dim)."""
        x = self.vae.decode(z).sample.flatten(1)
        return self.proj_out(x) * self.config.scale + self.config.shift


class DatasetEncoder(ModelMixin, ConfigMixin):
    """A labelled few-shot set -> one vector: features (B, classes, n, d_in) pooled within each class,
    then across classes (absent classes masked: ``present`` (B, classes) bool). -> (B, d_out)."""

    @register_to_config
    def __init__(self, d_in: int = 64, d_hidden: int = 64, d_out: int = 64, heads: int = 4):
        super().__init__()
        self.intra = SetPool(d_in, d_hidden, d_hidden, heads)
        self.inter = SetPool(d_hidden, d_hidden, d_out, heads)

    def forward(self, feats: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        b, c, n, d = feats.shape
        per_class = self.intra(feats.reshape(b * c, n, d)).view(b, c, -1)
        return self.inter(per_class, None if present is None else ~present)


class ConditionalLatentUNet(ModelMixin, ConfigMixin):
    """eps(z_t, t, c): diffusers' ``UNet2DModel`` on [z_t ; map(c)], the dataset encoding ``c`` (B, d_cond)
    projected to ``cond_channels`` maps of the latent's size and concatenated (D2NWG's ``concat``)."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, size: int = 8, d_cond: int = 64, cond_channels: int = 4,
                 channels: tuple[int, ...] = (32, 64)):
        super().__init__()
        from diffusers import UNet2DModel

        self.cond_proj = nn.Linear(d_cond, cond_channels * size * size)
        self.unet = UNet2DModel(sample_size=size, in_channels=latent_channels + cond_channels,
                                out_channels=latent_channels, block_out_channels=tuple(channels),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                norm_num_groups=8)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = self.config.size
        maps = self.cond_proj(cond).view(len(cond), self.config.cond_channels, s, s)
        if len(maps) == 1 and len(z) > 1:
            maps = maps.expand(len(z), -1, -1, -1)
        return self.unet(torch.cat([z, maps], 1), t).sample
