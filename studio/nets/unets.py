"""The zoo's diffusers UNet configurations (sizes measured in ``../shared/reference/cpu-trials.md``)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from studio.data import digits, shapes
from studio.data.text import EMBED_DIM

# Widths of the digits UNet's three levels: "base" is the zoo's digits-cond (1.05 M parameters, ~1.2 s a
# training step of batch 128 on one core); "small" trains ~4x faster per step (0.26 M) for live runs.
DIGITS_SIZES = {"small": (16, 32, 32), "base": (32, 64, 64)}


def digits_unet(size: str = "base", self_condition: bool = False) -> UNet2DModel:
    """Class-conditional digits UNet; ``base``: 1.05 M params, ~121 MFLOP per 16 x 16 image.

    ``num_class_embeds=11``: classes 0..9 and the null class 10 (label dropout), so the same
    weights serve conditional and unconditional sampling. ``self_condition``: DDAE++'s
    self-conditioned decoder (:class:`SelfCondUNet2DModel`).
    """
    if size not in DIGITS_SIZES:
        raise ValueError(f"unknown network size {size!r}; choose one of {', '.join(DIGITS_SIZES)}")
    kw = dict(sample_size=digits.IMAGE_SIZE, in_channels=1, out_channels=1,
              block_out_channels=DIGITS_SIZES[size], layers_per_block=1,
              down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
              add_attention=False, norm_num_groups=8, num_class_embeds=digits.NUM_CLASSES + 1)
    return SelfCondUNet2DModel(**kw) if self_condition else UNet2DModel(**kw)


class SelfCondUNet2DModel(UNet2DModel):
    """A diffusers ``UNet2DModel`` whose decoder is conditioned on the network's own features: DDAE++'s
    *self-conditioning* (Xiang et al. 2025, FutureXiang/ddae_plus_plus).

    The bottleneck (the middle block's output, the layer with the richest semantics) is globally
    average pooled, mapped by a small MLP (``Linear -> SiLU -> Linear``, the last layer zero-initialised so
    training starts from the plain UNet) to the time-embedding width, and added to the embedding that
    every *decoder* block receives (time + class); the encoder and middle block see the plain embedding.
    About 1% more compute. Deviation: DDAE++'s code for this is not public for UNets (its repository holds
    the DiT version, not read here); this follows the paper's description, "aggregating and rerouting
    intermediate features to guide subsequent decoding layers", on the embedding path the UNet already has.
    Only the configuration of the studio's UNets is covered (no skip / fourier variants of UNet2DModel).
    """

    # UNet2DModel's other settings stay at its defaults, so they are not written to (or read from) config.json
    ignore_for_config = ["act_fn", "attention_head_dim", "attn_norm_num_groups", "center_input_sample",
                         "class_embed_type", "downsample_padding", "downsample_type", "dropout", "flip_sin_to_cos",
                         "freq_shift", "mid_block_scale_factor", "mid_block_type", "norm_eps", "num_train_timesteps",
                         "resnet_time_scale_shift", "time_embedding_dim", "time_embedding_type", "upsample_type"]

    @register_to_config
    def __init__(self, sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                 layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                 add_attention=False, norm_num_groups=8, num_class_embeds=None):
        super().__init__(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                         block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                         down_block_types=down_block_types, up_block_types=up_block_types,
                         add_attention=add_attention, norm_num_groups=norm_num_groups,
                         num_class_embeds=num_class_embeds)
        width = block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.self_condition = nn.Sequential(nn.Linear(block_out_channels[-1], width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.self_condition[-1].weight)
        nn.init.zeros_(self.self_condition[-1].bias)

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        sample = self.mid_block(sample, emb)
        decoder_emb = emb + self.self_condition(sample.mean(dim=(2, 3)))  # the self-condition
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            sample = block(sample, res, decoder_emb)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return UNet2DOutput(sample=sample) if return_dict else (sample,)


def shapes_unet() -> UNet2DConditionModel:
    """Text-conditional shapes UNet: cross-attention on MiniLM token embeddings at 8 x 8 and the
    middle block, plus the pooled sentence embedding added to the time embedding
    (``class_embed_type="projection"``, as SDXL adds its pooled text embedding).
    """
    return UNet2DConditionModel(
        sample_size=shapes.IMAGE_SIZE, in_channels=3, out_channels=3,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=EMBED_DIM, attention_head_dim=8, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM,
    )
