"""The model types the manager lends, kept together (as k-diffusion keeps its model adapters).

Each wraps trained networks with what the engine needs to drive them; none of them trains or
loads anything (that is :mod:`studio.core.loading`). Networks themselves live in
:mod:`studio.nets` or come from diffusers.

* :class:`DiffusionModel`: an image denoiser ``model_fn(x_t, t, cond)`` with its scheduler config;
* :class:`LatentDiffusionModel`: a Stable-Diffusion-style pipeline adapted at the edge (VAE, CLIP);
* :class:`INRDiffusionModel`: DDMI, a latent denoiser whose latents decode to functions (render at any size);
* :class:`SeriesDiffusion`: a TSDiff series denoiser on windows ``(B, L, C)``;
* :class:`NAGModel`: DiffusionNAG's score network and dataset-aware accuracy predictor;
* :class:`WeightGenerator`: a generator of classifier weights (D2NWG or p-diff) with its training checkpoints.

:func:`model_kind` names what a registered entry is, from what is known without loading it
(a zoo entry's ``studio.json``): the registry's methods list only the kinds they can drive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from studio import lazy

torch = lazy.load("torch")

ModelKind = Literal["image", "series", "idempotent", "nag", "judge", "classifier", "experts", "text-encoder",
                    "probe", "weightgen", "invdiff", "var", "inr", "other"]
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # precision -> torch dtype name


def model_kind(info: dict) -> ModelKind:
    """What kind of model a registry entry with ``info`` (its studio.json, or what a loader said) is.

    ``image``: a diffusion model over images (zoo, diffusers folder, latent pipeline, tuned adapter);
    ``series``: a TSDiff model; the other names are the zoo's ``kind`` field as it is; ``other``
    when ``info`` names no kind (a bare network, say).
    """
    kind = info.get("kind")
    if kind == "diffusion":
        return "series" if info.get("domain") == "series" else "image"
    return kind if kind in ("idempotent", "nag", "judge", "classifier", "experts", "text-encoder", "probe",
                                   "weightgen", "invdiff", "var", "inr") else "other"


@dataclass
class DiffusionModel:
    """A denoiser with what the engine needs to drive it.

    ``model_fn(x_t, t, cond)`` returns the network's prediction (``prediction_type``);
    ``cond`` holds the UNet's keyword arguments (``class_labels``; ``encoder_hidden_states``,
    ``encoder_attention_mask``), batched.
    """

    name: str
    unet: torch.nn.Module
    scheduler_config: dict
    prediction_type: str = "epsilon"
    conditioning: Literal["none", "class", "text"] = "none"
    info: dict = field(default_factory=dict)
    gaussian: Any = None  # the training data's Gaussian model (studio.core.gaussian.GaussianStats), for teleportation
    # "fp32", or "bf16"/"fp16": the forward runs under autocast to it and returns fp32 (set by the manager
    # only where studio.core.precision's rule allows it on this machine; see that module)
    precision: str = "fp32"

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.precision == "fp32":
            return self.unet(x, t, **cond).sample
        with torch.autocast(x.device.type, dtype=getattr(torch, AUTOCAST_DTYPES[self.precision])):
            out = self.unet(x, t, **cond).sample
        return out.float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [-1, 1]: the identity for pixel-space models (latent ones override)."""
        return x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model space: the identity for pixel-space models (latent ones override)."""
        return images

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's images: its sample shape (latent models: the VAE's output)."""
        return tuple(self.sample_shape)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.unet]


@dataclass
class LatentDiffusionModel(DiffusionModel):
    """A Stable-Diffusion-style pipeline (SD 1.x / 2.x, SD-Turbo) with the zoo models' ``model_fn``,
    plus what a latent text model adds:

    * ``encode_prompts(prompts)`` -> ``{"encoder_hidden_states": (B, 77, D)}``, as the pipeline's own
      ``encode_prompt`` does it (CLIP tokenizer padded to ``model_max_length``, last hidden state);
    * ``decode(latents)`` -> images (B, 3, H, W) in [-1, 1] through the VAE (latents / scaling_factor).
    """

    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    @lazy.no_grad
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """CLIP token embeddings (B, model_max_length, D); long prompts are cut as diffusers cuts them."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.text_encoder.parameters()).device
        return {"encoder_hidden_states": self.text_encoder(ids.to(device))[0]}

    @lazy.no_grad
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> latents: the VAE posterior's mean, scaled (as the
        diffusers training scripts and the Diffusion Classifier's code encode)."""
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    @lazy.no_grad
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, 8h, 8w) images in [-1, 1]."""
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return image.clamp(-1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.out_channels, self.sample_shape[1] * scale, self.sample_shape[2] * scale)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, self.text_encoder]


@dataclass
class INRDiffusionModel(DiffusionModel):
    """DDMI (Park et al., ICLR 2024): a latent denoiser (``unet``) over the latents of a D2C-VAE
    (:class:`studio.nets.inr.D2CVAE`), whose decoder makes feature planes and an MLP that renders them
    at any size. ``decode`` renders at the training size (so the engine's sampling loop and judges
    treat it as a 32 x 32 image model); :meth:`render` at any other."""

    vae: Any = None

    @lazy.no_grad
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> the posterior mean latents (B, C, 8, 8)."""
        return self.vae.encode(images.to(self.vae.device, self.vae.dtype)).mean

    @lazy.no_grad
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.render(latents)

    @lazy.no_grad
    def render(self, latents: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The latents' functions rendered at ``size`` x ``size`` (default the training size), in [-1, 1]."""
        return self.vae.render(latents.to(self.vae.device, self.vae.dtype), size).clamp(-1, 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.vae.config.image_size
        return (3, size, size)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae]


@dataclass
class SeriesDiffusion(DiffusionModel):
    """A loaded TSDiff model: the net, its diffusers scheduler config, and its window set-up in
    ``info`` (window, horizon, lags, freq, season, tau, train_end, series). Windows are (B, L, C)."""

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        return self.unet(x, t)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t)

    @property
    def sample_shape(self) -> tuple[int, int]:
        return (int(self.info["window"]), self.unet.config.channels)


@dataclass
class NAGModel:
    """A zoo ``nag`` entry: the score network, the predictor and their studio.json."""

    name: str
    score: torch.nn.Module
    predictor: torch.nn.Module
    info: dict = field(default_factory=dict)

    @property
    def components(self) -> dict[str, torch.nn.Module]:  # what the manager sizes (as for a pipeline)
        return {"score": self.score, "predictor": self.predictor}


@dataclass
class WeightGenerator:
    """A zoo ``weightgen`` entry: D2NWG (nets ``vae``, ``encoder``, ``unet``) or p-diff (``<task>/ae``,
    ``<task>/denoiser`` per task), its DDPM scheduler config, and ``tensors``: D2NWG, the classifier
    zoo (``checkpoints`` (N, P), ``accuracy`` (N,), ``base`` (P,)); p-diff, each task's training
    checkpoints (``<task>/checkpoints`` (n, P))."""

    name: str
    method: Literal["d2nwg", "pdiff"]
    nets: dict[str, torch.nn.Module]
    scheduler_config: dict
    tensors: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    @property
    def components(self) -> dict[str, torch.nn.Module]:  # what the manager sizes and fingerprints
        return self.nets

    @property
    def frozen(self) -> dict[str, torch.Tensor]:
        """p-diff: each task's vector outside the generated head (its first checkpoint)."""
        return {t: self.tensors[f"{t}/checkpoints"][0] for t in self.info.get("tasks", [])}

    def training_checkpoints(self, task_id: str | None = None) -> tuple[torch.Tensor, list[str]]:
        """The checkpoints this generator learned from ((n, P), their task ids): p-diff, the task's own;
        D2NWG, the seen tasks' zoo models."""
        if self.method == "pdiff":
            ck = self.tensors[f"{task_id}/checkpoints"]
            return ck, [task_id] * len(ck)
        seen = set(self.info["tasks"])
        rows = [i for i, t in enumerate(self.info["checkpoint_tasks"]) if t in seen]
        return self.tensors["checkpoints"][rows], [self.info["checkpoint_tasks"][i] for i in rows]


@dataclass
class InvDiffModule:
    """A zoo ``invdiff`` entry: InvDiff's trained ``delta`` UNet, whose prediction is mixed into its
    frozen biased base model's (``info["base"]``) as ``r * delta + (1 - r) * eps_b``
    (:func:`studio.core.invdiff.mix`), and the MAX step's output it was trained with (``groups``:
    ``weights`` (n, G) soft groups, ``loss_latents`` / ``loss_targets`` (n,) per-sample losses)."""

    name: str
    delta: torch.nn.Module
    groups: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    @property
    def components(self) -> dict[str, torch.nn.Module]:  # what the manager sizes and fingerprints
        return {"delta": self.delta}


@dataclass
class VARModel:
    """A zoo ``var`` entry: a next-scale autoregressive text-to-image model (VAR, Tian et al. 2024):
    its multi-scale residual VQ ``tokenizer`` (:class:`studio.nets.var.MultiScaleVQ`) and its
    block-causal ``transformer`` (:class:`studio.nets.var.NextScaleTransformer`), conditioned on the
    studio's MiniLM caption embeddings. ``placeholder``: a subject-tuned model's learned block that
    replaces the placeholder word's embeddings (ARBooth), None for a base model."""

    name: str
    tokenizer: torch.nn.Module
    transformer: torch.nn.Module
    info: dict = field(default_factory=dict)
    placeholder: torch.Tensor | None = None

    @property
    def components(self) -> dict[str, torch.nn.Module]:  # what the manager sizes and fingerprints
        return {"tokenizer": self.tokenizer, "transformer": self.transformer}
