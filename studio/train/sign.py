"""SIGN: the losses, the teacher pairs and the training recipes of the idempotent generator f.

Losses (IGN's, as the paper's pseudocode routes their gradients, and the score-distillation
terms SIGN adds; there is no public SIGN code, so the distillation terms are this studio's
reading of the paper, documented as such):

* :func:`ign_losses`: ``L_rec = D(f(x), x)`` on data; ``L_idem = D(f_copy(f(z)), f(z))`` with
  f_copy a frozen copy, so the gradient flows only through the *inner* f; ``L_tight =
  -D(f(sg f(z)), sg f(z))`` through the *outer* f only (routing it through the frozen copy gives
  it no gradient at all, a known porting bug), clamped as ``tanh(L / (a L_ref)) a L_ref`` with
  a = 1.5 and ``L_ref = D(f(z), z)``. D is the per-image mean absolute error.
* :func:`dmd_loss`: distribution matching on ``f(z)`` noised to a random t: the gradient
  ``(x0_fake - x0_real) / mean|f(z) - x0_real|`` (DMD's normalised form of ``s_fake - s_real``),
  applied through the surrogate ``0.5 ||f(z) - sg(f(z) - grad)||^2``; the fake score is trained in
  alternation by :func:`denoising_loss` on samples of f.
* the regression term: ``D(f(z_k), x_k)`` on teacher pairs (below).

SIGN distils an idempotent one-step generator f from ``digits-cond`` (used unconditionally, its
null class). Besides the IGN terms and the distribution-matching term, its regression term pairs
a noise z with the teacher's *deterministic* DDIM sample from that same z (a consistency-style
target), so those pairs are computed once here and cached: :func:`teacher_pairs`.

Recipes (:func:`train`, resumable from ``runs/<name>``): ``sign-digits`` starts f from the teacher's
weights and trains it in two stages, a warm-up on the regression term and reconstruction, then every
term (IGN's three, the regression and DMD, the fake score updated once per f step); ``ign-digits`` is
plain IGN from random weights (IGN's losses only), the baseline that shows what the teacher fixes.
For the benchmark's stability runs, a SIGN run can train on one disjoint block of the cached pairs
(``pair_block``: block b is pairs ``b * n_pairs .. (b + 1) * n_pairs - 1``, :func:`pair_range`) and an IGN
run can start from the teacher's weights (``init="teacher"``, the same start as SIGN's).

Pair k's noise is drawn from its own generator (seed ``seed * 1_000_003 + k``), so pair k is the
same whatever ``n`` or chunking is asked for, and a stopped run resumes chunk by chunk.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from studio.core.device import make_generator
from studio.core.sampling import make_scheduler, predicted_x0, run_to_end, sample
from studio.train.common import (RUNS_DIR, LossLog, StepLog, make_accelerator, optimizer_step, process_entropy,
                                 weights_digest)

TIGHT_CLAMP = 1.5  # a in tanh(L / (a L_ref)) a L_ref
PAIR_STEPS = 25  # DDIM steps of the teacher's deterministic (eta 0) sample
PAIR_SEED = 11


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """D: the per-image mean absolute error, ``(B,)``."""
    return (a - b).abs().flatten(1).mean(1)


def frozen_copy(f: torch.nn.Module) -> torch.nn.Module:
    """A copy of f that gives no gradient to its own weights (refresh it with :func:`sync`)."""
    g = copy.deepcopy(f)
    return g.requires_grad_(False)


def sync(f_copy: torch.nn.Module, f: torch.nn.Module) -> None:
    f_copy.load_state_dict(f.state_dict())


def ign_losses(f: Callable, f_copy: Callable, x: torch.Tensor, z: torch.Tensor,
               a: float = TIGHT_CLAMP) -> dict[str, torch.Tensor]:
    """IGN's three terms (means over the batch), each with the gradient routing of the paper's code."""
    fx = f(x)
    fz = f(z)
    return {"rec": distance(fx, x).mean(), **idem_tight(f, f_copy, z, fz, a), "fz": fz}


def idem_tight(f: Callable, f_copy: Callable, z: torch.Tensor, fz: torch.Tensor,
               a: float = TIGHT_CLAMP) -> dict[str, torch.Tensor]:
    """IGN's idempotence and (clamped) tightness terms for noises ``z`` with ``fz = f(z)`` already computed."""
    f_z = fz.detach()
    ff_z = f(f_z)  # outer f trainable, inner output detached: tightness
    f_fz = f_copy(fz)  # outer f frozen, gradient through the inner f: idempotence
    ref = distance(f_z, z)
    tight = -distance(ff_z, f_z)
    tight = torch.tanh(tight / (a * ref)) * a * ref
    return {"idem": distance(f_fz, fz).mean(), "tight": tight.mean()}


def dmd_loss(x: torch.Tensor, real_eps: Callable, fake_eps: Callable, scheduler,
             generator: torch.Generator, t_range: tuple[float, float] = (0.02, 0.98)) -> torch.Tensor:
    """Distribution-matching loss on generated images ``x`` (gradient flows into x only); ``scheduler``:
    the teacher's training scheduler (diffusers), which noises x and reads x0 from the two epsilons."""
    T = scheduler.config.num_train_timesteps
    t = torch.randint(int(t_range[0] * T), int(t_range[1] * T), (x.shape[0],), generator=generator).to(x.device)
    noise = torch.randn(x.shape, generator=generator).to(x)
    with torch.no_grad():
        xt = scheduler.add_noise(x, noise, t)
        x0_real = predicted_x0(scheduler, real_eps(xt, t), xt, t, "epsilon")
        x0_fake = predicted_x0(scheduler, fake_eps(xt, t), xt, t, "epsilon")
        weight = 1.0 / (x - x0_real).abs().flatten(1).mean(1).clamp_min(1e-5)
        grad = (x0_fake - x0_real) * weight.view(-1, *([1] * (x.dim() - 1)))
    return 0.5 * ((x - (x - grad).detach()) ** 2).flatten(1).sum(1).mean()


def denoising_loss(eps_fn: Callable, x0: torch.Tensor, scheduler, generator: torch.Generator) -> torch.Tensor:
    """Epsilon-MSE at a random step of ``scheduler``: trains the fake score on samples of f (``x0`` detached)."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    return ((eps_fn(scheduler.add_noise(x0.detach(), noise, t), t) - noise) ** 2).mean()


def pair_noise(k0: int, k1: int, shape: tuple[int, ...], seed: int = PAIR_SEED) -> torch.Tensor:
    """Noises of pairs k0 .. k1 - 1, each from its own generator."""
    return torch.cat([torch.randn((1, *shape), generator=make_generator(seed * 1_000_003 + k)) for k in range(k0, k1)])


@torch.no_grad()
def teacher_pairs(n: int, *, model=None, seed: int = PAIR_SEED, steps: int = PAIR_STEPS, chunk: int = 512,
                  root=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, x)``: n noises and the teacher's DDIM-``steps`` samples from them (null class), cached
    in ``runs/sign-pairs/`` one chunk per file."""
    if model is None:
        from studio.core.loading import load_zoo

        model = load_zoo("digits-cond")
    folder = (root or RUNS_DIR) / "sign-pairs" / f"{model.name}-seed{seed}-ddim{steps}"
    folder.mkdir(parents=True, exist_ok=True)
    null = model.info.get("null_class", 10)
    zs, xs = [], []
    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher pairs")
    for k0 in starts:
        k1 = min(n, k0 + chunk)
        path = folder / f"pairs_{k0:06d}_{k0 + chunk:06d}.safetensors"
        if path.exists():
            part = load_file(path)
        else:
            z_full = pair_noise(k0, k0 + chunk, model.sample_shape, seed)
            sched = make_scheduler("ddim", model.scheduler_config, model.prediction_type)

            def denoise(x, t):
                return model.model_fn(x, t, {"class_labels": torch.full((x.shape[0],), null)})

            x_full = run_to_end(sample(denoise, sched, tuple(z_full.shape), num_inference_steps=steps,
                                       latents=z_full, eta=0.0))
            part = {"z": z_full.contiguous(), "x": x_full.clamp(-1, 1).contiguous()}
            save_file(part, path)
        zs.append(part["z"][: k1 - k0])
        xs.append(part["x"][: k1 - k0])
    return torch.cat(zs), torch.cat(xs)



# ----------------------------------------------------------------------------------------------
# Training f: SIGN (teacher-initialised, regression warm-up then the joint objective) and plain IGN


LAMBDA = {"reg": 20.0, "rec": 20.0, "idem": 20.0, "tight": 2.5, "dmd": 0.05}  # IGN's 20 / 20 / 2.5 on L1
IGN_LR, IGN_BETAS = 1e-4, (0.5, 0.999)  # IGN's Adam
SIGN_LR = 2e-4
FAKE_LR = 1e-4
BATCH = 64
N_PAIRS = 16384
RECIPES = {  # steps per phase: "warmup" = regression + reconstruction; "joint" = every term
    "sign-digits": {"method": "sign", "warmup": 1500, "joint": 400},
    "ign-digits": {"method": "ign", "warmup": 0, "joint": 400},
}
TERMS_WARMUP = frozenset({"reg", "rec"})  # the recipe's warm-up phase
TERMS_ALL = frozenset({"reg", "rec", "idem", "tight", "dmd"})  # the recipe's joint phase
# the benchmark's ablation ladder: each rung adds one part of the objective. Every rung starts from the same
# checkpoint (teacher's weights + a shared regression-only warm-up) and sees the same cached pairs, the same batches
# and the same number of steps; only the terms of its second phase differ
LADDER = {
    "distil": frozenset({"reg"}),  # (1) regression onto teacher pairs only: plain distillation
    "distil+ign": frozenset({"reg", "rec", "idem", "tight"}),  # (2) + IGN's three terms
    "distil+ign+dmd": TERMS_ALL,  # (3) + distribution matching: the full objective (this studio's SIGN)
}
# stability runs of the benchmark: 400 steps each, about the same wall clock (IGN's step costs ~2x a warm-up step);
# IGN's seed-0 run *is* the zoo's ign-digits
SHORT = {"sign": {"warmup": 300, "joint": 100}, "ign": {"warmup": 0, "joint": 400}}
INITS = ("teacher", "random")


def build_f(method: str, seed: int = 0, teacher: torch.nn.Module | None = None, init: str | None = None):
    """f for ``method``: SIGN starts from the teacher's weights (``teacher``: its UNet, loaded from
    the zoo when not given), IGN from a random UNet; ``init`` ("teacher" or "random") overrides that."""
    from studio.nets.idempotent import IdempotentNet
    from studio.nets.unets import digits_unet

    init = init or ("teacher" if method == "sign" else "random")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    torch.manual_seed(seed)
    unet = digits_unet()
    if init == "teacher":
        unet.load_state_dict((teacher if teacher is not None else teacher_unet()).state_dict())
    return IdempotentNet(unet.float().train().requires_grad_(True))


def pair_range(n_pairs: int, block: int | None = None) -> tuple[int, int]:
    """Indices ``(k0, k1)`` of the cached pairs a run trains on: the first ``n_pairs``, or block ``block`` of
    ``n_pairs`` (blocks are disjoint; pair k's noise depends on k only, so every block is an independent draw)."""
    b = block or 0
    if b < 0 or n_pairs < 1:
        raise ValueError(f"need n_pairs >= 1 and block >= 0, got {n_pairs}, {block}")
    return b * n_pairs, (b + 1) * n_pairs


def teacher_unet() -> torch.nn.Module:
    from studio.core.loading import load_zoo

    return load_zoo("digits-cond").unet


def build_fake_score(teacher: torch.nn.Module | None = None):
    """DMD's fake score: a trainable copy of the teacher's epsilon network (null class)."""
    return copy.deepcopy(teacher if teacher is not None else teacher_unet()).float().train().requires_grad_(True)


def sign_step(f, f_copy, fake, teacher, batch: dict, scheduler, gen, *, joint: bool = True,
              terms: frozenset | None = None) -> dict[str, torch.Tensor]:
    """One SIGN objective: ``reg`` (noise -> teacher DDIM sample) and ``rec`` always; in the joint
    phase also IGN's ``idem`` and ``tight`` on the same noises and the DMD term on f(z).

    ``terms`` (a subset of :data:`TERMS_ALL`, e.g. a rung of :data:`LADDER`) overrides the phase's
    set: the terms left out are neither computed nor returned (``fake``/``f_copy`` may then be None)."""
    use = terms if terms is not None else (TERMS_ALL if joint else TERMS_WARMUP)
    unknown = set(use) - TERMS_ALL
    if unknown or not use:
        raise ValueError(f"terms must be a non-empty subset of {sorted(TERMS_ALL)}, got {sorted(use)}")
    x, z, target = batch["x"], batch["z"], batch["target"]
    b = z.shape[0]
    out: dict[str, torch.Tensor] = {}
    if "rec" in use:
        both = f(torch.cat([x, z]))
        fx, fz = both[:b], both[b:]
        out["rec"] = distance(fx, x).mean()
    else:
        fz = f(z)
    if "reg" in use:
        out["reg"] = distance(fz, target).mean()
    if use & {"idem", "tight"}:
        it = idem_tight(f, f_copy, z, fz)
        out.update({k: v for k, v in it.items() if k in use})
    if "dmd" in use:
        null = torch.full((b,), 10, device=z.device)
        out["dmd"] = dmd_loss(fz, lambda xt, t: teacher(xt, t, class_labels=null).sample,
                              lambda xt, t: fake(xt, t, class_labels=null).sample, scheduler, gen)
    return out


def ign_step(f, f_copy, batch: dict) -> dict[str, torch.Tensor]:
    terms = ign_losses(f, f_copy, batch["x"], batch["z"])
    terms.pop("fz")
    return terms


def train(name: str, seed: int = 0, *, warmup: int | None = None, joint: int | None = None, root=None,
          export: bool = True, checkpoint_every: int = 100, progress: bool = True, threads: int | None = None,
          n_pairs: int = N_PAIRS, ladder: str | None = None, pair_block: int | None = None,
          init: str | None = None) -> dict:
    """Train ``sign-digits`` or ``ign-digits`` (resuming from ``runs/<run>``); returns the run's record.

    ``warmup``/``joint`` override the recipe's step counts (the stability runs of the benchmark);
    such runs are kept under ``runs/<name>-seed<seed>-<warmup>-<joint>`` and never exported.
    ``ladder`` (a key of :data:`LADDER`, with ``name="sign-digits"``): ``warmup`` steps of regression
    only (shared by every rung: the run starts from a copy of the ``distil`` run stopped at ``warmup``,
    trained first if absent), then ``joint`` steps with only that rung's terms; kept under ``runs/``
    (:func:`ladder_run_name`), never exported.
    ``pair_block`` (SIGN): train on block b of ``n_pairs`` cached pairs (:func:`pair_range`) instead of the first
    ``n_pairs``; ``init="teacher"`` (IGN): start f from the teacher's weights. Both are kept under their own run names
    (:func:`run_name_of`), never exported.

    Under ``accelerate launch`` f and the fake score are data parallel: each process draws its own batch (process 0:
    the one-process stream), the gradients are averaged, ``runs/<run>/loss.jsonl`` logs every term per step averaged
    over processes (so does the history), and only the main process computes missing teacher pairs, saves and exports.
    """
    import numpy as np
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from studio.data import digits
    from studio.train.common import Checkpoint, Timer
    from studio.train.diffusion import noise_scheduler

    if threads:
        torch.set_num_threads(threads)
    accelerator = make_accelerator()
    recipe = dict(RECIPES[name])
    method = recipe["method"]
    init = init or ("teacher" if method == "sign" else "random")
    if pair_block is not None and (method != "sign" or ladder is not None):
        raise ValueError("pair_block is for sign-digits runs outside the ladder")
    run_name = run_name_of(name, seed, warmup, joint, n_pairs=n_pairs, pair_block=pair_block, init=init)
    if pair_block is not None:
        recipe.update(n_pairs=n_pairs, pair_block=pair_block, pairs=list(pair_range(n_pairs, pair_block)))
    if init != ("teacher" if method == "sign" else "random"):
        recipe["init"] = init
    recipe["warmup"] = recipe["warmup"] if warmup is None else warmup
    recipe["joint"] = recipe["joint"] if joint is None else joint
    use = None
    if ladder is not None:
        if method != "sign" or ladder not in LADDER:
            raise ValueError(f"ladder runs are sign-digits runs with a rung of {sorted(LADDER)}")
        use = LADDER[ladder]
        recipe.update(ladder=ladder, terms=sorted(use), warmup_terms=sorted(LADDER["distil"]), n_pairs=n_pairs)
        run_name = ladder_run_name(ladder, recipe["warmup"], recipe["joint"], n_pairs, seed)
    custom = run_name != name
    total = recipe["warmup"] + recipe["joint"]
    ckpt = Checkpoint(run_name, root)

    # loaded once: f, the EMA and the fake start from it
    teacher = teacher_unet() if method == "sign" or init == "teacher" else None
    f = build_f(method, seed, teacher, init)
    ema_holder = build_f(method, seed, teacher, init)
    lr, betas = (SIGN_LR, (0.5, 0.999)) if method == "sign" else (IGN_LR, IGN_BETAS)
    opt = torch.optim.Adam(f.parameters(), lr=lr, betas=betas)
    modules = {"f": f, "ema": ema_holder}
    fake = fake_opt = None
    if method == "sign":
        if use is None or "dmd" in use:
            fake = build_fake_score(teacher)
            fake_opt = torch.optim.Adam(fake.parameters(), lr=FAKE_LR)
            modules["fake"] = fake
    step, seconds, history = 0, 0.0, []
    if ladder is not None and not ckpt.exists() and recipe["warmup"] > 0 and recipe["joint"] > 0:
        import shutil

        shared = Checkpoint(ladder_run_name("distil", recipe["warmup"], 0, n_pairs, seed), root)
        if not shared.exists() or json_step(shared) < recipe["warmup"]:
            train(name, seed, warmup=recipe["warmup"], joint=0, root=root, export=False, progress=progress,
                  n_pairs=n_pairs, ladder="distil", checkpoint_every=checkpoint_every)
        if accelerator.is_main_process:
            shutil.copytree(shared.dir, ckpt.dir)
        accelerator.wait_for_everyone()
    if ckpt.exists():  # (a ladder run copied from the shared warm-up has no fake score yet: it stays the teacher's)
        state = ckpt.load({k: m for k, m in modules.items() if (ckpt.dir / f"{k}.safetensors").exists()}, opt)
        step, seconds, history = state["step"], state["seconds"], state.get("history", [])
    ema = EMAModel(ema_holder.parameters() if step else f.parameters(), decay=0.999, use_ema_warmup=True,
                   power=3 / 4)
    ema.optimization_step = step
    f_copy = frozen_copy(f)
    scheduler = noise_scheduler()
    data = torch.from_numpy(digits.load("train").images)
    pairs = None
    if method == "sign":
        k0, k1 = pair_range(n_pairs, pair_block)
        with accelerator.main_process_first():  # missing pairs: computed and cached by the main process
            pairs = tuple(p[k0:k1] for p in teacher_pairs(k1, root=root))
    device = accelerator.device
    if fake is not None:
        f_train, opt, fake_train, fake_opt = accelerator.prepare(f, opt, fake, fake_opt)
    else:
        f_train, opt = accelerator.prepare(f, opt)
    ema.to(device)
    f_copy.to(device)
    if teacher is not None:
        teacher.to(device)
    steplog = StepLog(accelerator, ckpt.dir, start=step)
    timer = Timer(seconds)
    bar = tqdm(total=total, initial=step, desc=run_name, disable=not (progress and accelerator.is_main_process))
    recent: dict[str, LossLog] = {}

    def save():
        ema.copy_to(ema_holder.parameters())
        if accelerator.is_main_process:
            ckpt.save(step, timer.seconds, modules, opt, {"history": history, "recipe": recipe, "method": method})

    while step < total:
        rng = np.random.default_rng(process_entropy(accelerator, seed, step))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = data[torch.from_numpy(rng.integers(0, len(data), BATCH))].to(device)
        joint_phase = step >= recipe["warmup"]
        if method == "sign":
            phase_use = use if use is None or joint_phase else LADDER["distil"]
            idx = torch.from_numpy(rng.integers(0, n_pairs, BATCH))
            batch = {"x": x, "z": pairs[0][idx].to(device), "target": pairs[1][idx].to(device)}
            if (joint_phase and use is None) or (phase_use is not None and "idem" in phase_use):
                sync(f_copy, f)
            terms = sign_step(f_train, f_copy, fake, teacher, batch, scheduler, gen, joint=joint_phase,
                              terms=phase_use)
        else:
            batch = {"x": x, "z": torch.randn(x.shape, generator=gen).to(device)}
            sync(f_copy, f)
            terms = ign_step(f_train, f_copy, batch)
        loss = sum(LAMBDA[k] * v for k, v in terms.items())
        optimizer_step(loss, opt, f.parameters(), clip=1.0, ema=ema, accelerator=accelerator)
        if fake is not None and "dmd" in terms:  # fake score: DSM on the current samples of f, one update per f update
            with torch.no_grad():
                fz = f(batch["z"])
            null = torch.full((BATCH,), 10, device=device)
            fake_loss = denoising_loss(lambda xt, t: fake_train(xt, t, class_labels=null).sample, fz, scheduler, gen)
            optimizer_step(fake_loss, fake_opt, fake.parameters(), clip=None, accelerator=accelerator)
            terms["fake_dsm"] = fake_loss
        means = steplog.write(step + 1, terms)  # every term, averaged over processes
        for k in terms:
            recent.setdefault(k, LossLog()).append(means[k])
        step += 1
        bar.update(1)
        if step % 25 == 0:
            means = {k: round(v.mean(), 5) for k, v in recent.items()}
            history.append({"step": step, "seconds": round(timer.seconds, 1), **means})
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()})
            recent = {}
        if step % checkpoint_every == 0:
            save()
    save()
    bar.close()
    result = {"name": name, "run": run_name, "method": method, "seed": seed, "steps": step,
              "seconds": round(timer.seconds, 1), "recipe": recipe, "history": history,
              "processes": accelerator.num_processes, "weights_sha256": weights_digest(f)}
    if export and not custom and accelerator.is_main_process:
        export_f(name, ema_holder, result)
    accelerator.wait_for_everyone()  # (a ladder's caller copies this run's checkpoint next)
    return result


def run_name_of(name: str, seed: int = 0, warmup: int | None = None, joint: int | None = None, *,
                n_pairs: int = N_PAIRS, pair_block: int | None = None, init: str | None = None) -> str:
    """``name`` for the zoo's own run (seed 0, the recipe's steps), else ``name-seed<s>-<warmup>-<joint>``, plus
    ``-p<n_pairs>b<block>`` for a run on a block of the pairs and ``-init<init>`` for a non-default start."""
    recipe = RECIPES[name]
    w = recipe["warmup"] if warmup is None else warmup
    j = recipe["joint"] if joint is None else joint
    suffix = "" if pair_block is None else f"-p{n_pairs}b{pair_block}"
    if init is not None and init != ("teacher" if recipe["method"] == "sign" else "random"):
        suffix += f"-init{init}"
    if (seed, w, j, suffix) == (0, recipe["warmup"], recipe["joint"], ""):
        return name
    return f"{name}-seed{seed}-{w}-{j}{suffix}"


def ladder_run_name(rung: str, warmup: int, joint: int, n_pairs: int, seed: int = 0) -> str:
    return f"sign-ladder-{rung.replace('+', '-')}-w{warmup}-j{joint}-p{n_pairs}-seed{seed}"


def load_ladder(rung: str, warmup: int, joint: int, n_pairs: int, seed: int = 0, root=None, progress: bool = False):
    """The EMA f of a ladder run (trained first if absent or unfinished) and the run's saved record."""
    import json

    from studio.train.common import Checkpoint

    ckpt = Checkpoint(ladder_run_name(rung, warmup, joint, n_pairs, seed), root)
    if not ckpt.exists() or json_step(ckpt) < warmup + joint:
        train("sign-digits", seed, warmup=warmup, joint=joint, root=root, export=False, progress=progress,
              n_pairs=n_pairs, ladder=rung, checkpoint_every=25)
    f = build_f("ign", seed)  # architecture only
    f.load_state_dict(load_file(ckpt.dir / "ema.safetensors"))
    return f.eval().requires_grad_(False), json.loads(ckpt.meta_path.read_text())


def load_run(name: str, seed: int = 0, warmup: int | None = None, joint: int | None = None, root=None, *,
             n_pairs: int = N_PAIRS, pair_block: int | None = None, init: str | None = None, progress: bool = False):
    """The EMA f of a finished (or stopped) run, ready to sample; trains it first (or on) if absent or stopped."""
    from studio.train.common import Checkpoint

    recipe = RECIPES[name]
    w = recipe["warmup"] if warmup is None else warmup
    j = recipe["joint"] if joint is None else joint
    ckpt = Checkpoint(run_name_of(name, seed, warmup, joint, n_pairs=n_pairs, pair_block=pair_block, init=init), root)
    if not ckpt.exists() or json_step(ckpt) < w + j:
        train(name, seed, warmup=warmup, joint=joint, root=root, export=False, progress=progress, n_pairs=n_pairs,
              pair_block=pair_block, init=init, checkpoint_every=25)
    f = build_f("ign", seed)  # architecture only; the weights come from the checkpoint
    f.load_state_dict(load_file(ckpt.dir / "ema.safetensors"))
    return f.eval().requires_grad_(False)


def json_step(ckpt) -> int:
    import json

    return json.loads(ckpt.meta_path.read_text())["step"]


def export_f(name: str, f, result: dict, zoo=None) -> None:
    """EMA weights (fp16 on disk, fp32 in memory) as a diffusers UNet folder + studio.json, then MANIFEST."""
    import json

    from studio.core.loading import ZOO_DIR
    from studio.train.common import machine_description, write_manifest_entry

    zoo = zoo or ZOO_DIR
    folder = zoo / name
    unet = copy.deepcopy(f.unet).to(torch.float16)
    unet.save_pretrained(folder / "model", safe_serialization=True)
    info = {"kind": "idempotent", "model_class": type(unet).__name__, "domain": "digits",
            "timestep": f.timestep, "class_label": f.class_label, "method": result["method"],
            "teacher": "digits-cond" if result["method"] == "sign" else None}
    (folder / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    last = result["history"][-1] if result["history"] else {}
    write_manifest_entry(name, {
        "recipe": f"studio train {name}", "kind": "idempotent", "train_steps": result["steps"],
        "train_seconds": result["seconds"], "machine": machine_description(), "batch_size": BATCH,
        "params": sum(p.numel() for p in unet.parameters()), "phases": result["recipe"],
        "final_losses": {k: v for k, v in last.items() if k not in ("step", "seconds")},
    }, zoo)


if __name__ == "__main__":  # python -m studio.train.sign N: precompute the pairs in the background
    import sys

    torch.set_num_threads(2)
    z, x = teacher_pairs(int(sys.argv[1]) if len(sys.argv) > 1 else N_PAIRS, progress=True)
    print(f"{len(z)} pairs ready: z {tuple(z.shape)}, x in [{x.min():.2f}, {x.max():.2f}]")
