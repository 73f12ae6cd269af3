"""Guiding classifiers: the ones a guidance method uses (never the judges).

:class:`GuideNet` is a small ResNet for 16 x 16 digits in [-1, 1]: a 3 x 3 stem and three
basic residual blocks (widths w, 2w, 4w; the last two stride 2), global average pooling and a
linear head. Every ReLU is its own ``nn.ReLU`` module so EluCD's smoothing can swap it for
``Softplus(beta)`` (:func:`smoothed`), and convolutions carry no bias (the ResNet layout PPAP's
LoRA recipe was written for: LoRA on the stem and on ``conv1`` / ``conv2`` of every block).

``time_conditional=True`` makes it Dhariwal & Nichol's noise-aware classifier f(x_t, t): a
sinusoidal timestep embedding, through an MLP, is added (per channel) after the first
convolution of every block. Clean classifiers take ``t`` and ignore it, so every classifier has
the one signature ``classifier(x, t) -> logits``.

:class:`ExpertBank` is PPAP's multi-expert wrapper: N classifiers, one per equal bin of the
original 1000-step range, chosen by the *original* timestep even when sampling with fewer steps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin

from studio.nets.lora import merged, with_lora


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, emb_dim: int | None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))
        self.time_proj = nn.Linear(emb_dim, c_out) if emb_dim else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.bn1(self.conv1(x))
        if self.time_proj is not None:
            h = h + self.time_proj(emb)[:, :, None, None]
        h = self.bn2(self.conv2(self.relu1(h)))
        return self.relu2(h + self.shortcut(x))


class GuideNet(ModelMixin, ConfigMixin):
    """(B, 1, 16, 16) in [-1, 1] (and timesteps (B,) or a scalar) -> logits (B, num_classes)."""

    @register_to_config
    def __init__(self, width: int = 48, num_classes: int = 10, in_channels: int = 1,
                 time_conditional: bool = False):
        super().__init__()
        emb_dim = 4 * width if time_conditional else None
        if time_conditional:
            self.time_features = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embedding = TimestepEmbedding(width, emb_dim)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList([BasicBlock(width, width, 1, emb_dim),
                                     BasicBlock(width, 2 * width, 2, emb_dim),
                                     BasicBlock(2 * width, 4 * width, 2, emb_dim)])
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        emb = None
        if self.config.time_conditional:
            if t is None:
                raise ValueError("a noise-aware classifier needs the timestep t")
            t = torch.as_tensor(t, device=x.device).flatten()
            t = t.expand(x.shape[0]) if t.numel() == 1 else t
            emb = self.time_embedding(self.time_features(t).to(x.dtype))
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.fc(h.mean(dim=(2, 3)))


def lora_targets(net: nn.Module) -> list[str]:
    """PPAP's LoRA sites in a ResNet: the stem convolution and ``conv1`` / ``conv2`` of every block
    (not the shortcut convolutions, not the head). (A diffusion UNet's: :func:`studio.nets.lora.lora_targets`.)"""
    return [name for name, m in net.named_modules()
            if isinstance(m, nn.Conv2d) and (name == "stem.0" or name.endswith((".conv1", ".conv2")))]


def smoothed(net: nn.Module, beta: float) -> nn.Module:
    """A copy of ``net`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)`` (EluCD trick (b));
    ``beta = inf`` returns ``net`` itself."""
    if beta == float("inf"):
        return net
    out = copy.deepcopy(net)
    for parent in out.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
    return out


def expert_index(t: int, n_experts: int, num_train_timesteps: int = 1000) -> int:
    """PPAP's rule: the first i with ``i*T/N <= t <= (i+1)*T/N`` (both ends inclusive, so t = 200
    goes to expert 0 of 5), t in *original* timesteps."""
    for i in range(n_experts):
        if i * num_train_timesteps / n_experts <= t <= (i + 1) * num_train_timesteps / n_experts:
            return i
    raise ValueError(f"timestep {t} is outside [0, {num_train_timesteps}]")


class ExpertBank(nn.Module):
    """N classifiers, expert i for the original timesteps of bin i (:func:`expert_index`)."""

    def __init__(self, experts: list[nn.Module], num_train_timesteps: int = 1000):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num_train_timesteps = num_train_timesteps

    def expert_for(self, t) -> nn.Module:
        t = int(torch.as_tensor(t).flatten()[0])
        return self.experts[expert_index(t, len(self.experts), self.num_train_timesteps)]

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.expert_for(t)(x, t)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# PPAP's adapter: rank 16, alpha 8 (scaling 0.5), the official defaults
LORA_RANK, LORA_ALPHA = 16, 8


def lora_config(rank: int = LORA_RANK, alpha: int = LORA_ALPHA) -> dict:
    return {"r": rank, "lora_alpha": alpha}


def make_lora(base: nn.Module, config: dict) -> nn.Module:
    """A copy of ``base`` with LoRA (:func:`studio.nets.lora.with_lora`, peft's default init) on
    :func:`lora_targets`, every BatchNorm also trainable (PPAP trains all norms and biases except
    the head's; the convolutions carry no bias).

    peft's Conv2d LoRA (``A``: a k x k conv to r channels, ``B``: a 1 x 1 conv back) stands in for
    PPAP's hand-written conv LoRA (``B @ A`` reshaped to the kernel); same rank, fewer factors.
    """
    model = with_lora(base, config["r"], seed=None, alpha=config["lora_alpha"], targets=lora_targets(base), init=True)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
    return model


def _norm_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))


def expert_state(model: nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """What one expert owns: LoRA factors and BatchNorm state (``lora``), else every weight."""
    state = model.state_dict()
    if not lora:
        return {k: v.clone() for k, v in state.items()}
    norms = _norm_prefixes(model)
    return {k: v.clone() for k, v in state.items() if "lora_" in k or k.startswith(norms)}


PEFT_WRAPPER = "base_model.model."


def _unwrapped_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Expert states saved before the one LoRA implementation (the shipped ``guide-ppap``) come from
    a peft ``PeftModel`` wrapper: their keys start ``base_model.model.``; the network's own keys do not."""
    return {k.removeprefix(PEFT_WRAPPER): v for k, v in state.items()}


def build_experts(base: nn.Module, states: list[dict[str, torch.Tensor]], adapter: str,
                  config: dict | None = None, num_train_timesteps: int = 1000) -> ExpertBank:
    """An :class:`ExpertBank` from ``base`` and each expert's stored state; LoRA experts are merged
    into plain copies of ``base`` (so guiding with them costs what the base costs)."""
    experts = []
    for state in states:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if adapter == "lora":
            model = make_lora(base, config or lora_config())
            result = model.load_state_dict(_unwrapped_keys(state), strict=False)
            missing = [k for k in result.missing_keys if "lora_" in k or k.startswith(_norm_prefixes(model))]
            if result.unexpected_keys or missing:
                raise ValueError(f"expert state does not fit the LoRA layout: unexpected "
                                 f"{result.unexpected_keys[:3]}, missing {missing[:3]}")
            model = merged(model)
        elif adapter == "full":
            model = copy.deepcopy(base)
            model.load_state_dict(state)
        else:
            raise ValueError(f"unknown expert adapter {adapter!r}")
        experts.append(model.eval().requires_grad_(False))
    return ExpertBank(experts, num_train_timesteps)
