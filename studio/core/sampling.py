"""The one denoising loop, over any diffusers scheduler.

A *denoiser* is ``denoise(x_t, t) -> prediction``: a model function with its conditioning (and
any guidance) already bound, see :mod:`studio.core.guidance`. ``x_t`` is what the network sees,
i.e. the scheduler's ``scale_model_input`` output (for Euler-type schedulers that is the
variance-preserving x_t, for DDPM/DDIM the sample itself).

:func:`sample` is a generator, used as ``*progress, x0 = sample(...)``: it yields a
:class:`Progress` per step (with an x0 preview every ``preview_every`` steps) and finally the
sample tensor, so a GUI streams previews, a notebook takes the last item, and a consumer that
stops iterating cancels the run between steps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, get_args

from studio import lazy
from studio.errors import UserError
from studio.core.device import make_generator

torch = lazy.load("torch")

Denoiser = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
SchedulerName = Literal["ddpm", "ddim", "dpm++", "euler", "euler-a", "unipc", "flow-euler", "lcm"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)
# diffusers class names; resolved on first use, since importing diffusers takes seconds and
# the app should answer its first request before that (see scheduler_class)
SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
    "lcm": "LCMScheduler",
}
SCHEDULER_LABELS = {
    "ddpm": "DDPM (ancestral)", "ddim": "DDIM (deterministic)", "dpm++": "DPM-Solver++ (multistep)",
    "euler": "Euler", "euler-a": "Euler ancestral", "unipc": "UniPC", "flow-euler": "Flow-matching Euler",
    "lcm": "LCM (few-step models: x0, then re-noise)",
}
FLOW_SCHEDULERS = ("flow-euler", "dpm++", "unipc")  # those that can run a flow-matching model


class SchedulerError(UserError):
    """A scheduler name or scheduler / model combination that cannot work."""


def scheduler_class(name: str):
    """The diffusers scheduler class for ``name`` (imports diffusers on first call)."""
    return lazy.diffusers_attr(SCHEDULERS[name])


def make_scheduler(name: str, base_config: dict, prediction_type: str = "epsilon", **overrides):
    """Scheduler ``name`` built from a model's training scheduler config.

    Flow-matching models (``prediction_type="flow"``) run with FlowMatchEuler, or with
    DPM-Solver++ / UniPC in their flow mode; epsilon / v models with any of the others.
    """
    if name not in SCHEDULERS:
        raise SchedulerError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    if prediction_type == "flow":
        if name not in FLOW_SCHEDULERS:
            raise SchedulerError(f"a flow-matching model needs one of {', '.join(FLOW_SCHEDULERS)}, not {name!r}")
        if name != "flow-euler":
            overrides = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, **overrides}
    elif name == "flow-euler":
        raise SchedulerError(f"'flow-euler' needs a flow-matching model; this model predicts {prediction_type!r}")
    cls = scheduler_class(name)
    accepted = inspect.signature(cls.__init__).parameters  # another scheduler's keys would only draw warnings
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_") and k in accepted}
    if name == "dpm++":
        overrides.setdefault("algorithm_type", "dpmsolver++")
    return cls.from_config(config, **overrides)


@dataclass
class Progress:
    """One step of a run: a sampling step, or a training step (``info``: loss, ...)."""
    step: int  # 1-based
    total: int
    timestep: float | None = None  # the diffusion timestep of a sampling step
    preview: torch.Tensor | None = None  # a picture of the run so far: sampling, (B, C, H, W) predicted x0
    # in model range; training, what the method draws (e.g. Tune's validation grid)
    info: dict | None = None  # what a method adds for its GUI (e.g. a guidance trace)


def predicted_x0(scheduler, pred: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor | int,
                 prediction_type: str) -> torch.Tensor:
    """x0 estimate from one model output (Eq. 15 of DDPM for epsilon; x - sigma * v for flow).

    ``t``: one timestep for the whole batch (an int or a 0-d tensor), or one per sample, (B,).
    """
    batched = torch.is_tensor(t) and t.dim() > 0
    per_sample = (-1, *[1] * (x_in.dim() - 1))  # (B,) -> (B, 1, ..., 1)
    if prediction_type == "flow":
        T = scheduler.config.num_train_timesteps
        sigma = t.to(x_in).view(per_sample) / T if batched else float(t) / T
        return x_in - sigma * pred
    abar = scheduler.alphas_cumprod.to(x_in.device)
    a = (abar[t.to(x_in.device).long()].view(per_sample) if batched else abar[int(t)]).to(x_in.dtype)
    if prediction_type == "epsilon":
        return (x_in - (1 - a).sqrt() * pred) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * x_in - (1 - a).sqrt() * pred
    return pred


def predicted_eps(scheduler, pred: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor,
                  prediction_type: str) -> torch.Tensor:
    """The noise estimate from one model output at per-sample timesteps ``t`` (B,): the output itself
    for epsilon models; ``sqrt(abar) v + sqrt(1 - abar) x_t`` for v; ``(x_t - sqrt(abar) x0) /
    sqrt(1 - abar)`` for x0 ("sample") models. Flow models have no noise schedule here."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "flow":
        raise SchedulerError("a flow-matching model has no epsilon estimate on a DDPM schedule")
    abar = scheduler.alphas_cumprod.to(x_in.device)
    a = abar[t.to(x_in.device).long()].view(-1, *[1] * (x_in.dim() - 1)).to(x_in.dtype)
    if prediction_type == "v_prediction":
        return a.sqrt() * pred + (1 - a).sqrt() * x_in
    return (x_in - a.sqrt() * pred) / (1 - a).sqrt()


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def sample(
    denoise: Denoiser,
    scheduler,
    shape: tuple[int, ...],
    *,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    prediction_type: str = "epsilon",
    preview_every: int = 0,
    latents: torch.Tensor | None = None,
    eta: float = 0.0,
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    start_index: int = 0,
    timesteps: list[int] | None = None,
) -> Iterator[Progress | torch.Tensor]:
    """Yield a :class:`Progress` per step, then the final sample ``(B, C, H, W)`` in model range.

    ``correct(x_prev, t)``, when given, adjusts each step's output before the next step: the
    place for guidance applied *after* the scheduler's update (TSDiff's DDPM self-guidance);
    guidance that changes the model output belongs in ``denoise`` instead.

    ``start_index`` skips the schedule's first steps, as diffusers' img2img pipelines do for
    SDEdit: ``latents`` is then the image already noised to ``scheduler.timesteps[start_index]``
    (:func:`start_timestep`).

    ``timesteps``: a custom grid (schedulers whose ``set_timesteps`` takes one) instead of the
    scheduler's own ``num_inference_steps`` grid.

    Noise comes from ``generator`` on the CPU, as diffusers' pipelines draw it, so the loop
    reproduces ``DDPMPipeline`` / ``DDIMPipeline`` exactly for the same seed.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    randn_tensor = lazy.module("diffusers.utils.torch_utils").randn_tensor
    device = torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    x = latents.to(device=device, dtype=dtype) * getattr(scheduler, "init_noise_sigma", 1.0)
    step_kwargs = {}
    if _accepts(scheduler.step, "generator"):
        step_kwargs["generator"] = generator
    if _accepts(scheduler.step, "eta"):
        step_kwargs["eta"] = eta
    scale = getattr(scheduler, "scale_model_input", None)
    timesteps = scheduler.timesteps[start_index * getattr(scheduler, "order", 1):]
    if len(timesteps) == 0:
        raise ValueError(f"start_index {start_index} leaves no step of {num_inference_steps}")
    for i, t in enumerate(timesteps):
        x_in = scale(x, t) if scale is not None else x  # Euler-type: x / sqrt(sigma^2 + 1)
        pred = denoise(x_in, t)
        preview = None
        if preview_every and ((i + 1) % preview_every == 0 or i + 1 == len(timesteps)):
            preview = predicted_x0(scheduler, pred, x_in, t, prediction_type).detach()
        x = scheduler.step(pred, t, x, **step_kwargs).prev_sample
        if correct is not None:
            x = correct(x, t)
        yield Progress(step=i + 1, total=len(timesteps), timestep=float(t), preview=preview)
    yield x


def start_timestep(scheduler, num_inference_steps: int, strength: float) -> tuple[int, torch.Tensor]:
    """SDEdit's start as diffusers' img2img pipelines compute it: of ``num_inference_steps``, run
    the last ``int(num_inference_steps * strength)``; returns ``(start_index, t_start)``."""
    scheduler.set_timesteps(num_inference_steps)
    run = min(max(int(num_inference_steps * strength), 1), num_inference_steps)
    start = num_inference_steps - run
    return start, scheduler.timesteps[start * getattr(scheduler, "order", 1)]


def _ve_scaled(scheduler) -> bool:
    """Whether the scheduler's sample is variance-exploding scaled (Euler-type: ``x / alpha``)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 and hasattr(scheduler, "sigmas")


def schedule_point(scheduler, index: int) -> tuple[float, float]:
    """``(alpha, sigma)`` of the variance-preserving ``x_t = alpha x0 + sigma eps`` at step ``index`` of
    the scheduler's current grid (``set_timesteps`` called); for a flow-matching scheduler, the rectified-flow
    path ``x_t = (1 - s) x0 + s eps`` (alpha = 1 - s, sigma = s)."""
    if "FlowMatch" in type(scheduler).__name__ or getattr(scheduler.config, "use_flow_sigmas", False):
        s = float(scheduler.sigmas[index])
        return 1 - s, s
    if _ve_scaled(scheduler):
        s = float(scheduler.sigmas[index])
        return 1 / (1 + s * s) ** 0.5, s / (1 + s * s) ** 0.5
    abar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[index * getattr(scheduler, "order", 1)])])
    return abar ** 0.5, (1 - abar) ** 0.5


def teleport(stats, scheduler, latents: torch.Tensor, num_inference_steps: int, skip: int) -> torch.Tensor:
    """Analytical teleportation (Wang & Vastola): carry the initial noise ``latents`` along the exact
    probability flow of the data's Gaussian model ``stats`` (:mod:`studio.core.gaussian`) from the
    grid's first step to step ``skip``; returns what :func:`sample` takes as ``latents`` with
    ``start_index=skip`` (it multiplies by ``init_noise_sigma``)."""
    from studio.core import gaussian

    if not 0 < skip < num_inference_steps:
        raise ValueError(f"skip must be between 1 and {num_inference_steps - 1} of {num_inference_steps} steps")
    if tuple(latents.shape[1:]) != tuple(stats.shape):
        raise SchedulerError(f"the Gaussian statistics are for samples of shape {tuple(stats.shape)}, "
                             f"this model draws {tuple(latents.shape[1:])}")
    scheduler.set_timesteps(num_inference_steps)
    init = float(getattr(scheduler, "init_noise_sigma", 1.0))
    ve = _ve_scaled(scheduler)
    (a0, s0), (ak, sk) = schedule_point(scheduler, 0), schedule_point(scheduler, skip)
    x0 = latents.double() * init * (a0 if ve else 1.0)  # the variance-preserving x at the first step
    xk = gaussian.pf_ode(stats.to(latents.device, torch.float64), x0, a0, s0, ak, sk)
    return ((xk / ak if ve else xk) / init).to(latents.dtype)


def start_latents(scheduler, shape, generator, device, num_inference_steps: int,
                  teleport_to: tuple | None = None) -> tuple[torch.Tensor | None, int]:
    """``(latents, start_index)`` for :func:`sample`: ``(None, 0)`` without teleportation (sample
    draws the noise itself); with ``teleport_to=(stats, k)``, the same noise drawn from the same
    generators, carried to step ``k`` by :func:`teleport`."""
    if teleport_to is None or not teleport_to[1]:
        return None, 0
    stats, start = teleport_to[:2]
    randn_tensor = lazy.module("diffusers.utils.torch_utils").randn_tensor
    noise = randn_tensor(shape, generator=generator, device=torch.device(device))
    return teleport(stats, scheduler, noise, num_inference_steps, start), start


def fresh_grid(scheduler, num_inference_steps: int, skip: int) -> list[int] | None:
    """The official code's continuation after teleporting: a fresh grid of ``N - k`` steps from the skip
    level down (evenly spaced over ``[0, t_k]`` as diffusers' ``linspace`` spacing spaces ``[0, T)``),
    instead of the tail of the N-step grid. ``None`` where the scheduler takes no custom timesteps
    (DDIM, UniPC) or is not first order."""
    if not _accepts(scheduler.set_timesteps, "timesteps") or getattr(scheduler, "order", 1) != 1:
        return None
    import numpy as np

    scheduler.set_timesteps(num_inference_steps)
    t_k = int(scheduler.timesteps[skip])
    grid = [int(t) for t in np.linspace(0, t_k, num_inference_steps - skip + 1).round()[::-1][:-1]]
    return grid if len(set(grid)) == len(grid) else None


TELEPORT_HELP = ("Skip the first k steps: the exact probability flow of the training data's Gaussian model carries "
                 "the noise there, the model runs the rest (analytical teleportation, Wang & Vastola, TMLR 2024). "
                 "The Gaussian is the unconditional data's: those steps ignore the prompt or class. 0 = off.")


def teleport_plan(model, skip: int, steps: int, regrid: bool = False) -> tuple | None:
    """``sample_images``' ``teleport_to`` for a method's "Teleported steps" value; clear messages when
    the model has no data statistics or nothing would be left for it to do. ``regrid``: continue on
    a :func:`fresh_grid` (the official code's way) where the scheduler allows it."""
    if not skip:
        return None
    stats = getattr(model, "gaussian", None)
    if stats is None:
        raise SchedulerError(f"{model.name!r} has no Gaussian statistics of its training data, which teleportation "
                             f"needs (zoo models: `studio train {model.name} --gaussian-stats`); set it to 0")
    if skip >= steps:
        raise SchedulerError(f"teleporting {skip} of {steps} steps leaves none for the model; teleport at most {steps - 1}")
    return (stats, skip, True) if regrid else (stats, skip)


def continuation(scheduler, num_inference_steps: int, teleport_to: tuple | None, latents, start: int):
    """``(latents, start_index, timesteps)`` for :func:`sample` after :func:`start_latents`: the tail of the
    grid, or a :func:`fresh_grid` when ``teleport_to`` asks for one and the scheduler takes it (the latents
    then rescaled to the new grid's ``init_noise_sigma``, which :func:`sample` multiplies by)."""
    if teleport_to is None or len(teleport_to) < 3 or not teleport_to[2] or not start:
        return latents, start, None
    grid = fresh_grid(scheduler, num_inference_steps, start)
    if grid is None:
        return latents, start, None
    before = float(getattr(scheduler, "init_noise_sigma", 1.0))
    scheduler.set_timesteps(timesteps=grid)
    return latents * (before / float(getattr(scheduler, "init_noise_sigma", 1.0))), 0, grid


def sample_images(model, denoise: Denoiser, scheduler, seeds: list[int], *, num_inference_steps: int,
                  preview_every: int = 0, teleport_to: tuple | None = None) -> Iterator[Progress | torch.Tensor]:
    """:func:`sample` for a loaded model (a ``DiffusionModel``: ``unet``, ``sample_shape``,
    ``prediction_type``, ``decode``), image i drawn from ``seeds[i]``; previews and the final sample
    pass through ``model.decode`` (a latent model's VAE; the identity for pixel models). Yields
    Progress items, then the images (B, C, H, W) in [-1, 1] on the CPU.

    ``teleport_to=(stats, k)``: the first ``k`` of the ``num_inference_steps`` steps are replaced by
    the exact flow of the data's Gaussian model (:func:`teleport`); the sampler runs the rest of its
    grid from there. Deviation: the official code recomputes a fresh grid of N - k steps from the
    skip level; diffusers' DDIM cannot take a custom grid, so every scheduler here continues on the
    tail of its own N-step grid (the same N - k network evaluations)."""
    device = next(model.unet.parameters()).device
    shape = (len(seeds), *model.sample_shape)
    generator = [make_generator(s) for s in seeds]
    latents, start = start_latents(scheduler, shape, generator, device, num_inference_steps, teleport_to)
    latents, start, grid = continuation(scheduler, num_inference_steps, teleport_to, latents, start)
    with torch.no_grad():
        steps = sample(denoise, scheduler, shape, num_inference_steps=num_inference_steps, timesteps=grid,
                       generator=generator, device=device, latents=latents, start_index=start,
                       prediction_type=model.prediction_type, preview_every=preview_every)
        for item in steps:
            if isinstance(item, Progress):
                if item.preview is not None:
                    item.preview = model.decode(item.preview)
                yield item
            else:
                yield model.decode(item).cpu()


def relay(steps: Iterator):
    """Yield a generator's :class:`Progress` items; return its final item (``result = yield from relay(...)``)."""
    for item in steps:
        if not isinstance(item, Progress):
            return item
        yield item
    raise RuntimeError("the generator ended without a result")


def run_to_end(gen: Iterator):
    """Exhaust a generator of progress records and return its last item (the result), keeping
    only one item at a time in memory."""
    last = None
    for last in gen:
        pass
    return last
