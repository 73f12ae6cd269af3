"""TSDiff's denoiser: residual blocks around a bidirectional state-space sequence layer.

Structure as the official ``BackboneModel`` (amazon-science/unconditional-time-series-diffusion,
``arch/backbones.py``): input ``Linear(C -> h) + ReLU``; sinusoidal step embedding (128) through
an MLP (SiLU); ``n`` residual blocks, each ``x + Linear(t_emb)`` -> pre-LayerNorm -> sequence
layer (+ residual) -> gated ``tanh * sigmoid`` -> two 1x1 convolutions (residual out, skip
out); the skips summed -> MLP head -> epsilon for every channel; optional ``init_skip``.

**Deviation (documented in docs/forecast.md).** The official sequence layer is a bidirectional S4
with a DPLR (HiPPO) state matrix and ``d_state = 128``. Here it is its diagonal sibling, a
bidirectional **S4D** layer (Gu et al. 2022, "On the parameterization and initialization of
diagonal state space models"; S4D-Lin initialisation, ``d_state = 32``): the same convolution
view (a kernel ``K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n * exp(l dt A_n))`` per channel, one
causal and one anti-causal, applied by FFT), then ``+ D u``, GELU and an output linear layer
as in S4's block. It is written by hand because no maintained package ships S4/S4D as a
PyTorch layer (the authors' ``state-spaces`` repository is not a package); it is ~40 lines
and cheap on a CPU for windows of a few hundred points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn



def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the diffusion step (the official ``SinusoidalPositionEmbeddings``)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class BidirectionalS4D(nn.Module):
    """Bidirectional diagonal state-space layer on ``(B, H, L)``, applied as an FFT convolution."""

    def __init__(self, d_model: int, d_state: int = 32, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        h, n = 2 * d_model, d_state // 2  # two directions; complex-conjugate pairs
        self.d_model = d_model
        self.log_dt = nn.Parameter(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_a_real = nn.Parameter(torch.log(0.5 * torch.ones(h, n)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(n, dtype=torch.float32).repeat(h, 1))
        self.c = nn.Parameter(torch.randn(h, n, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(d_model))
        self.out = nn.Linear(d_model, d_model)
        self._cache: tuple[int, torch.Tensor] | None = None

    def kernel(self, length: int) -> torch.Tensor:
        """``(2H, L)`` convolution kernels: the first H causal, the last H anti-causal."""
        dt = self.log_dt.exp()[:, None]
        a = torch.complex(-self.log_a_real.exp(), self.a_imag)
        dta = a * dt
        c = torch.view_as_complex(self.c) * (dta.exp() - 1) / a
        pos = torch.arange(length, device=dt.device, dtype=torch.float32)
        return 2 * torch.einsum("hn,hnl->hl", c, (dta[..., None] * pos).exp()).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[-1]
        if self.log_dt.requires_grad or self.training:
            self._cache = None
            k = self.kernel(length)
        else:  # frozen weights (inference, guidance): the kernel depends on the length only
            if self._cache is None or self._cache[0] != length or self._cache[1].device != u.device:
                self._cache = (length, self.kernel(length).detach())
            k = self._cache[1]
        k = F.pad(k[: self.d_model], (0, length)) + F.pad(k[self.d_model:].flip(-1), (length, 0))
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length), n=2 * length)
        y = y[..., :length] + u * self.d[:, None]
        return self.out(F.gelu(y).transpose(1, 2)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """One official ``S4Block``: time added, pre-norm sequence layer, gate, residual and skip 1x1 convs."""

    def __init__(self, hidden: int, d_state: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.seq = BidirectionalS4D(hidden, d_state)
        self.time_linear = nn.Linear(hidden, hidden)
        self.out_residual = nn.Conv1d(hidden, hidden, 1)
        self.out_skip = nn.Conv1d(hidden, hidden, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x + self.time_linear(t)[:, :, None]
        z = z + self.seq(self.norm(z.transpose(1, 2)).transpose(1, 2))
        z = torch.tanh(z) * torch.sigmoid(z)
        return self.out_residual(z) + x, self.out_skip(z)


class TSDiffNet(ModelMixin, ConfigMixin):
    """Epsilon network on ``(B, L, C)`` windows: channel 0 the series, channels 1.. its lags."""

    @register_to_config
    def __init__(self, channels: int = 3, hidden: int = 64, blocks: int = 3, step_emb: int = 128,
                 d_state: int = 32, init_skip: bool = False):
        super().__init__()
        self.input_init = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU())
        self.time_init = nn.Sequential(nn.Linear(step_emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.residual_blocks = nn.ModuleList(ResidualBlock(hidden, d_state) for _ in range(blocks))
        self.out_linear = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.input_init(x).transpose(1, 2)
        temb = self.time_init(step_embedding(t.reshape(-1).expand(x.shape[0]), self.config.step_emb))
        skips = 0
        for block in self.residual_blocks:
            h, skip = block(h, temb)
            skips = skips + skip
        out = self.out_linear(skips.transpose(1, 2))
        return out + x if self.config.init_skip else out


def tsdiff_scheduler_config(steps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.1) -> dict:
    """The paper's diffusion: T = 100, linear beta 1e-4 .. 0.1 (as a diffusers scheduler config)."""
    return {"num_train_timesteps": steps, "beta_start": beta_start, "beta_end": beta_end, "beta_schedule": "linear",
            "prediction_type": "epsilon", "clip_sample": False, "variance_type": "fixed_small"}
