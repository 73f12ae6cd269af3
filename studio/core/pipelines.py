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

from dataclasses import dataclass
from typing import Any

import torch

from studio.core.loading import DiffusionModel

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class LatentDiffusionModel(DiffusionModel):
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """CLIP token embeddings (B, model_max_length, D); long prompts are cut as diffusers cuts them."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return {"encoder_hidden_states": self.text_encoder(ids.to(device))[0]}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, 8h, 8w) images in [-1, 1]."""
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return image.clamp(-1, 1)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.text_encoder]


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
