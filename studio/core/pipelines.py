"""Real diffusers text-to-image pipelines (Stable Diffusion 1.x / 2.x, SD-Turbo), adapted at the edge.

A Stable Diffusion pipeline becomes a :class:`LatentDiffusionModel`: the same
``model_fn(x_t, t, cond)`` as the zoo models, so every method's guidance wrapper and the one
sampling loop drive it unchanged, plus the two things a latent text model adds:

* ``encode_prompts(prompts)`` -> ``{"encoder_hidden_states": (B, 77, D)}``, as the pipeline's own
  ``encode_prompt`` does it (CLIP tokenizer padded to ``model_max_length``, last hidden state);
* ``decode(latents)`` -> images (B, 3, H, W) in [-1, 1] through the VAE (latents / scaling_factor).

Nothing here downloads: the pipeline arrives from :mod:`studio.core.loading` (a local folder, or
a hub id already in the cache).
"""

from __future__ import annotations

from typing import Any

import torch

from studio.core.models import LatentDiffusionModel

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def is_text_to_image(pipe: Any) -> bool:
    components = getattr(pipe, "components", None) or {}
    return all(components.get(k) is not None for k in SD_COMPONENTS)


def from_pipeline(pipe: Any, name: str) -> LatentDiffusionModel:
    """Adapt a loaded Stable-Diffusion-style pipeline (unet, vae, text_encoder, tokenizer, scheduler)."""
    sched = dict(pipe.scheduler.config)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    return LatentDiffusionModel(
        name=name, unet=pipe.unet, scheduler_config=sched,
        prediction_type=sched.get("prediction_type", "epsilon"), conditioning="text",
        info={"kind": "diffusion", "domain": "latent", "pipeline": type(pipe).__name__},
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
    )
