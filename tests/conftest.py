"""Shared fixtures: tiny random models for fast contract tests, and the real zoo manager."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_digits_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       add_attention=False, norm_num_groups=4, num_class_embeds=11).eval()


def tiny_shapes_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=4, norm_num_groups=4,
        class_embed_type="projection", projection_class_embeddings_input_dim=384).eval()


@functools.lru_cache(maxsize=1)
def shared_text_encoder():
    """The real MiniLM encoder, loaded once per test session (read-only everywhere)."""
    from studio.data.text import load_text_encoder

    return load_text_encoder()


@pytest.fixture
def tiny_manager():
    """A manager with random-init tiny 'digits-cond' and 'shapes-t2i' (real text encoder)."""
    from studio.core.loading import DiffusionModel
    from studio.core.manager import ModelManager
    from studio.train.diffusion import noise_scheduler

    m = ModelManager(device="cpu")
    sched = dict(noise_scheduler().config)
    m.register("digits-cond", lambda: DiffusionModel("digits-cond", tiny_digits_unet(), sched, "epsilon", "class",
                                                     {"null_class": 10}),
               info={"kind": "diffusion", "conditioning": "class"})
    m.register("shapes-t2i", lambda: DiffusionModel("shapes-t2i", tiny_shapes_unet(), sched, "epsilon", "text", {}),
               info={"kind": "diffusion", "conditioning": "text"})
    m.register("text-encoder", shared_text_encoder)
    return m


@pytest.fixture(scope="session")
def zoo_manager():
    """The real zoo, shared across the session (as the app shares one manager)."""
    from studio.core.manager import ModelManager

    m = ModelManager(device="cpu")
    m.register_zoo()
    return m
