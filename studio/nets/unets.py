"""The zoo's diffusers UNet configurations (sizes measured in ``../shared/reference/cpu-trials.md``)."""

from __future__ import annotations

from diffusers import UNet2DConditionModel, UNet2DModel

from studio.data import digits, shapes
from studio.data.text import EMBED_DIM


def digits_unet() -> UNet2DModel:
    """Class-conditional digits UNet, 1.05 M params, ~121 MFLOP per 16 x 16 image.

    ``num_class_embeds=11``: classes 0..9 and the null class 10 (label dropout), so the same
    weights serve conditional and unconditional sampling.
    """
    return UNet2DModel(
        sample_size=digits.IMAGE_SIZE, in_channels=1, out_channels=1,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        add_attention=False, norm_num_groups=8, num_class_embeds=digits.NUM_CLASSES + 1,
    )


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
