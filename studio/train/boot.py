"""``digits-fewstep``: a few-step student of ``digits-cond``, distilled without data (BOOT, then a denoiser).

**Stage 1, BOOT** (Gu et al., "BOOT: Data-free Distillation of Denoising Diffusion Models with
Bootstrapping", ICML 2024; no official code, the loss as the studio's reference notes derive it):
a student ``g(eps, t, c)`` maps the *initial noise* ``eps`` to the signal ``y_t`` of the teacher's
DDIM trajectory from ``x_T = eps``, with ``x_t = alpha_t y_t + sigma_t eps``. For consecutive
grid times ``s < t``, one teacher DDIM step gives the target

    target = sg[ y_t + lambda_{s,t} (x0_teacher(x_t, t) - y_t) ],
    lambda_{s,t} = 1 - sigma_s alpha_t / (sigma_t alpha_s),
    L_bs = ||g(eps, s) - target||^2 / lambda_{s,t}^2,     L_bc = ||g(eps, T) - x0_teacher(eps, T)||^2.

The teacher's x0 carries classifier-free guidance (``CFG``); no EMA, as the paper says. Only
noise and class labels are sampled: the loop never reads the dataset (a test checks it).

**Stage 2, the few-step denoiser** ``D(x_t, t, c) -> x0``. BOOT is strictly one-step (g has no
x_t input, the reviewers' point), but the issue wants a model usable at 1, 2 and 4 steps, and PSO
noises target images and reads the model's x0 prediction, which needs an ``x_t -> x0`` network
(as SDXL-Turbo and DMD2 are). So D is regressed onto BOOT's own trajectories, still data-free:
``x_t = alpha_t g(eps, t, c) + sigma_t eps`` at the four distilled timesteps (999, 749, 499, 249,
DMD2's), target ``g(eps, 0, c)``, the trajectory's end. D samples with deterministic DDIM steps on
those timesteps (x0, then back onto the same trajectory with the implied noise), the path it was
trained on; LCM's stochastic re-noising (fresh noise each step) measured worse (FD-digits 36 vs 23
at 4 steps) and serves online PSO, which needs a Gaussian step. This stage is the studio's own, not
BOOT's; it adds no teacher call (g alone gives input and target).

**Driving a few-step model** (:class:`FewStep`, Tune's PSO uses it): D, or any distilled
pipeline (SD-Turbo), samples with deterministic DDIM on the distilled timesteps.

Deviations: a 1.05 M-parameter digits UNet for g and D (both start from the teacher's weights),
a 32-interval time grid (BOOT's finite-difference step delta = 1000/32), batch 64.
"""

from __future__ import annotations

import copy

from studio import lazy
from studio.core.device import make_generator
from studio.core.models import DiffusionModel
from studio.core.params import ParamError
from studio.core.sampling import make_scheduler, predicted_x0, run_to_end, sample

torch = lazy.load("torch")

K = 32  # bootstrap grid: t = round(999 k / K); s is the previous grid time
CFG = 1.5  # the teacher's guidance scale inside BOOT's targets
DISTILLED = (999, 749, 499, 249)  # the denoiser's timesteps (trailing DDIM at 4 steps)
BATCH = 64
LR = {"boot": 1e-4, "student": 2e-4}
RECIPES = {"digits-fewstep": {"boot": 1000, "student": 1600}}


def grid() -> torch.Tensor:
    return torch.tensor([round(999 * k / K) for k in range(K + 1)])


def signal_scales() -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t of the teacher's noise schedule (x_t = alpha_t x0 + sigma_t eps)."""
    from studio.train.diffusion import noise_scheduler

    abar = noise_scheduler().alphas_cumprod
    return abar.sqrt(), (1 - abar).sqrt()


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def teacher_x0(teacher: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
               alpha: torch.Tensor, sigma: torch.Tensor, w: float = CFG) -> torch.Tensor:
    """The teacher's x0 from x_t with classifier-free guidance ``eps_u + w (eps_c - eps_u)``, clipped to [-1, 1]."""
    null = torch.full_like(c, 10)
    with torch.no_grad():
        eps_c, eps_u = teacher(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([c, null])).sample.chunk(2)
    eps = eps_u + w * (eps_c - eps_u)
    return ((x - _col(sigma[t]) * eps) / _col(alpha[t])).clamp(-1, 1)


def boot_losses(g, teacher, eps: torch.Tensor, c: torch.Tensor, k: torch.Tensor,
                alpha: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """BOOT's bootstrap and boundary losses for noises ``eps``, classes ``c`` and grid indices ``k`` (1..K)."""
    times = grid().to(k.device)
    t, s = times[k], times[k - 1]
    b = eps.shape[0]
    with torch.no_grad():
        y_t = g(eps, t, class_labels=c).sample
    x_t = _col(alpha[t]) * y_t + _col(sigma[t]) * eps
    lam = 1 - sigma[s] * alpha[t] / (sigma[t] * alpha[s])
    target = y_t + _col(lam) * (teacher_x0(teacher, x_t, t, c, alpha, sigma) - y_t)
    big_t = torch.full_like(t, int(times[-1]))
    boundary = teacher_x0(teacher, eps, big_t, c, alpha, sigma)  # x_T ~ eps (alpha_T = 0.006)
    out = g(torch.cat([eps, eps]), torch.cat([s, big_t]), class_labels=torch.cat([c, c])).sample
    bs = ((out[:b] - target) ** 2).flatten(1).mean(1) / lam ** 2
    return {"bs": bs.mean(), "bc": ((out[b:] - boundary) ** 2).mean()}


def student_loss(student, g, eps: torch.Tensor, c: torch.Tensor, t: torch.Tensor,
                 alpha: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage 2: D(x_t, t, c) regressed onto the end of BOOT's trajectory through x_t."""
    with torch.no_grad():
        y = g(torch.cat([eps, eps]), torch.cat([t, torch.zeros_like(t)]), class_labels=torch.cat([c, c])).sample
        y_t, y_0 = y.chunk(2)
        x_t = _col(alpha[t]) * y_t + _col(sigma[t]) * eps
    return {"x0": ((student(x_t, t, class_labels=c).sample - y_0.clamp(-1, 1)) ** 2).mean()}


def train(name: str = "digits-fewstep", seed: int = 0, *, boot: int | None = None, student: int | None = None,
          root=None, teacher=None, export: bool = True, checkpoint_every: int = 100, progress: bool = True) -> dict:
    """Both stages, resumable from ``runs/<name>``; ``teacher`` (a UNet) defaults to ``digits-cond``'s.

    ``boot``/``student`` override the recipe's step counts. Returns the run's record.

    Under ``accelerate launch`` g and D are data parallel: each process draws its own noises, classes and times
    (process 0: the one-process stream), the gradients are averaged, ``runs/<name>/loss.jsonl`` logs the step's
    terms averaged over processes (so does the history), and only the main process saves and exports.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from studio.train.common import (Checkpoint, StepLog, Timer, make_accelerator, optimizer_step, process_entropy,
                                     weights_digest)

    steps = dict(RECIPES[name])
    steps.update({k: v for k, v in (("boot", boot), ("student", student)) if v is not None})
    total = steps["boot"] + steps["student"]
    accelerator = make_accelerator()
    if teacher is None:
        from studio.core.loading import load_zoo

        teacher = load_zoo("digits-cond").unet
    teacher = teacher.float().eval().requires_grad_(False)
    torch.manual_seed(seed)
    g = copy.deepcopy(teacher).train().requires_grad_(True)
    d = copy.deepcopy(teacher).train().requires_grad_(True)
    opt = torch.optim.Adam([{"params": g.parameters(), "lr": LR["boot"]},
                            {"params": d.parameters(), "lr": LR["student"]}])
    modules = {"boot": g, "student": d}
    ckpt = Checkpoint(name, root)
    step, seconds, history = 0, 0.0, []
    if ckpt.exists():
        state = ckpt.load(modules, opt)
        step, seconds, history = state["step"], state["seconds"], state.get("history", [])
    g_train, d_train, opt = accelerator.prepare(g, d, opt)
    device = accelerator.device
    teacher.to(device)
    alpha, sigma = (v.to(device) for v in signal_scales())
    distilled = torch.tensor(DISTILLED)
    steplog = StepLog(accelerator, ckpt.dir, start=step)
    timer = Timer(seconds)
    bar = tqdm(total=total, initial=step, desc=name, disable=not (progress and accelerator.is_main_process))
    recent: dict[str, list[float]] = {}

    def save():
        if accelerator.is_main_process:
            ckpt.save(step, timer.seconds, modules, opt, {"history": history, "recipe": steps})

    while step < total:
        gen = torch.Generator().manual_seed(int(np.random.default_rng(process_entropy(accelerator, seed, step)).integers(2**31)))
        eps = torch.randn(BATCH, teacher.config.in_channels, *[teacher.config.sample_size] * 2, generator=gen)
        c = torch.randint(0, 10, (BATCH,), generator=gen)
        if step < steps["boot"]:
            module = g
            k = torch.randint(1, K + 1, (BATCH,), generator=gen)
            terms = boot_losses(g_train, teacher, eps.to(device), c.to(device), k.to(device), alpha, sigma)
        else:
            module = d
            t = distilled[torch.randint(0, len(DISTILLED), (BATCH,), generator=gen)]
            terms = student_loss(d_train, g.eval(), eps.to(device), c.to(device), t.to(device), alpha, sigma)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        optimizer_step(loss, opt, module.parameters(), clip=1.0, accelerator=accelerator)
        means = steplog.write(step + 1, terms)  # every term, averaged over processes
        for key in terms:
            recent.setdefault(key, []).append(means[key])
        step += 1
        bar.update(1)
        if step % 25 == 0 or step == total:
            means = {key: round(float(np.mean(v)), 5) for key, v in recent.items()}
            history.append({"step": step, "seconds": round(timer.seconds, 1), **means})
            bar.set_postfix({key: f"{v:.3f}" for key, v in means.items()})
            recent = {}
        if step % checkpoint_every == 0:
            save()
    save()
    bar.close()
    result = {"name": name, "seed": seed, "steps": step, "seconds": round(timer.seconds, 1), "recipe": steps,
              "history": history, "processes": accelerator.num_processes, "weights_sha256": weights_digest(g, d)}
    if export and (boot, student) == (None, None) and accelerator.is_main_process:
        export_student(name, d, result, g=g)
    return result


def scheduler_config() -> dict:
    """The teacher's noise schedule for an x0 ("sample") model; trailing DDIM at 1 / 2 / 4 steps lands
    on the distilled timesteps."""
    from studio.train.diffusion import noise_scheduler

    return {**dict(noise_scheduler().config), "prediction_type": "sample"}


class FewStep:
    """A distilled model as it is driven (PSO, the benchmark, the zoo test): x0 predictions at any
    timesteps, noising, and few-step sampling.

    ``dm`` is a zoo :class:`DiffusionModel` (``digits-fewstep``: x0 prediction) or a latent text
    model (SD-Turbo: epsilon); ``unet`` is the network to run (a LoRA-wrapped copy of ``dm.unet``).
    Sampling is deterministic DDIM on the distilled timesteps (trailing spacing: 999, 749, 499, 249
    at 4 steps; 999, 499 at 2; 999 at 1), so only step counts that divide ``steps`` land on them.
    """

    def __init__(self, dm: DiffusionModel, unet: torch.nn.Module | None = None, steps: int = 4):
        self.dm, self.unet = dm, unet if unet is not None else dm.unet
        self.max_steps = steps
        self.step_counts = tuple(n for n in range(1, steps + 1) if steps % n == 0)
        self.scheduler = self.make_scheduler()
        self.scheduler.set_timesteps(steps)
        self.timesteps = self.scheduler.timesteps.clone().long()
        self.clip = bool(self.scheduler.config.get("clip_sample", False))  # the sampler clips x0 to [-1, 1]
        abar = self.scheduler.alphas_cumprod.float()
        self.alpha, self.sigma = abar.sqrt(), (1 - abar).sqrt()  # x_t = alpha_t x0 + sigma_t eps

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def condition(self, labels: list) -> dict[str, torch.Tensor]:
        """UNet keyword arguments for per-image conditions: class ints, or prompts for text models."""
        if self.dm.conditioning == "text":
            return {k: v.to(self.device) for k, v in self.dm.encode_prompts([str(p) for p in labels]).items()}
        if self.dm.conditioning == "class":
            return {"class_labels": torch.as_tensor([int(c) for c in labels], device=self.device)}
        return {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model space (a latent model's VAE mean, scaled; else the identity)."""
        with torch.no_grad():
            return self.dm.encode(images.to(self.device))

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The network's x0 prediction at per-sample timesteps ``t`` (B,)."""
        return predicted_x0(self.scheduler, self.unet(x_t, t, **cond).sample, x_t, t, self.dm.prediction_type)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``alpha_t x0 + sigma_t noise`` at per-sample timesteps ``t`` (B,)."""
        return self.scheduler.add_noise(x0, noise, t)

    def make_scheduler(self):
        return make_scheduler("ddim", self.dm.scheduler_config, self.dm.prediction_type, timestep_spacing="trailing",
                              steps_offset=0)

    @lazy.no_grad
    def sample(self, labels: list, seeds: list[int], steps: int, decode: bool = True) -> torch.Tensor:
        """Few-step samples (one per label, image i from ``seeds[i]``), on the CPU."""
        if steps not in self.step_counts:
            raise ParamError(f"a {self.max_steps}-step model samples at {', '.join(map(str, self.step_counts))} "
                             f"steps (its distilled timesteps), got {steps}")
        cond = self.condition(labels)
        shape = (len(labels), *self.dm.sample_shape)
        x = run_to_end(sample(lambda x_t, t: self.unet(x_t, t, **cond).sample, self.make_scheduler(), shape,
                              num_inference_steps=steps, generator=[make_generator(s) for s in seeds],
                              device=self.device, prediction_type=self.dm.prediction_type))
        return (self.dm.decode(x) if decode else x).cpu()


def export_student(name: str, d: torch.nn.Module, result: dict, zoo=None, g: torch.nn.Module | None = None) -> None:
    """D (fp16 on disk) as a diffusion-kind zoo folder: x0 ("sample") prediction, DDIM, then MANIFEST.
    BOOT's one-step g rides along in ``boot/`` (the benchmark and the notebook sample it)."""
    import json

    from studio import lazy
    from studio.core.loading import ZOO_DIR
    from studio.train.common import machine_description, write_manifest_entry

    zoo = zoo or ZOO_DIR
    folder = zoo / name
    copy.deepcopy(d).to(torch.float16).save_pretrained(folder / "model", safe_serialization=True)
    if g is not None:
        copy.deepcopy(g).to(torch.float16).save_pretrained(folder / "boot", safe_serialization=True)
    lazy.diffusers_attr("DDIMScheduler").from_config(scheduler_config()).save_pretrained(folder / "scheduler")
    info = {"kind": "diffusion", "model_class": type(d).__name__, "domain": "digits", "conditioning": "class",
            "null_class": 10, "prediction_type": "sample", "default_guidance": 1.0, "default_scheduler": "ddim",
            "default_steps": 4, "few_step": list(DISTILLED), "teacher": "digits-cond", "teacher_guidance": CFG,
            "class_names": [str(i) for i in range(10)]}
    (folder / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    last = {}
    for row in result["history"]:
        last.update({k: v for k, v in row.items() if k not in ("step", "seconds")})
    write_manifest_entry(name, {
        "recipe": f"studio train {name}", "kind": "diffusion", "train_steps": result["steps"],
        "train_seconds": result["seconds"], "machine": machine_description(), "batch_size": BATCH,
        "params": sum(p.numel() for p in d.parameters()), "phases": result["recipe"], "final_losses": last,
    }, zoo)


if __name__ == "__main__":  # python -m studio.train.boot: the recipe in the background
    torch.set_num_threads(2)
    print({k: v for k, v in train().items() if k != "history"})
