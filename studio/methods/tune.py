"""Tune: tune a few-step (timestep-distilled) model towards a handful of target images, by one of
several methods on the same targets, and compare what each buys and what it breaks.

Two choices make a run: the **loss** (what is optimised) and the **weights** (which of them train).

Losses (formulas in :mod:`studio.train.pso`, :mod:`studio.train.r0`, :mod:`studio.train.dro`):

* ``dpo`` / ``hinge``: offline **PSO** (Miao et al., ICLR 2025; official code
  ZichenMiao/Pairwise_Sample_Optimization): raise the likelihood of the targets x_w *relative to*
  references x_l sampled once from the untuned model, at the student's distilled timesteps,
  ``model_diff = L_w - neg_weight L_l`` with ``L = w(t) mean (x0_hat - x0)^2``, ``w = alpha^2 /
  sigma^2``; DPO form ``-log sigmoid(beta (ref_diff - model_diff))`` (reference: the untuned
  network), hinge form ``relu(1 + beta model_diff)`` (the released scripts'); both add
  ``prior_weight L_l``. ``neg_weight`` is the official ``neg_defactor`` (0.1).
* ``plain-distilled``: the fair baseline, ``mean L_w + prior_weight mean L_l`` on the same draws
  (only the pair term is gone). ``plain``: DreamBooth's epsilon MSE at uniform timesteps, no prior.
* ``r0``: **R0** (Luo et al., 2025; no official code, reconstructed): regularised maximisation of
  rewards on the generator's own samples (the asked digit's log-probability under ``guide-clean``
  plus a soft stroke-thickness reward), weight regularisation, random-eta sampling, normalised
  reward gradients. It reads the targets' digits, never their pixels.
* ``dro``: **Diffusion-DRO** (Wu et al., NeurIPS 2025; official ``train.py``): a hinge on
  reference-relative denoising losses of the targets (experts) against states of a lagged copy's
  own trajectories (a replay buffer), margin 1e-3, the copy synced every 16 steps.

Weights (:mod:`studio.train.tuning`): ``lora`` (peft, rank r on the UNet's convolutions), ``sara``
(**SaRA**, Hu et al., ICLR 2025: the smallest-magnitude share of every tensor, sparse optimizer
state, a nuclear-norm penalty, re-selection halfway), ``full`` (every weight).

The base model is deep-copied first, so the manager's model is never touched, and the tuned model
is a new manager key (saved and loaded by :mod:`studio.core.adapters`). The same code drives a
diffusers few-step pipeline (SD-Turbo) through :class:`~studio.core.models.LatentDiffusionModel` and
:class:`~studio.train.boot.FewStep`; the tests run it on tiny random components. After a run,
:func:`compare` measures it for the tab's comparison table (:func:`studio.train.tuning.measure`).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from studio import __version__, lazy
from studio.core import adapters
from studio.core.device import MAX_SEED
from studio.core.models import DiffusionModel
from studio.core.params import ParamError, spec, validate
from studio.core.sampling import Progress, run_to_end
from studio.data import digits
from studio.train import tuning
from studio.train.boot import FewStep
from studio.train.common import optimizer_step
from studio.train.dro import DRO
from studio.train.pso import distilled_plain_terms, pair_errors, plain_loss, pso_loss  # noqa: F401 (the API)
from studio.train.r0 import r0_terms

torch = lazy.load("torch")

BASE = "digits-fewstep"
REWARD_CLASSIFIER = "guide-clean"  # R0's reward model: Guide's clean classifier, never the judge
JUDGES = {"judge-digits", "fd-digits"}  # what the comparison is measured with
COMPARE_PER_CLASS, COMPARE_BOOT = 30, 100  # samples per digit and FD bootstrap resamples for the comparison
Style = Literal["thick", "thin", "thick-0-4", "custom"]
LossForm = Literal["dpo", "hinge", "plain-distilled", "plain", "r0", "dro"]
MIN_TARGETS, MAX_TARGETS = 2, 16
VALIDATION_STEPS = (1, 2, 4)
PSO_GROUP, LORA_GROUP, SARA_GROUP, FULL_GROUP = "PSO and plain losses", "LoRA", "SaRA", "All weights"
R0_GROUP, DRO_GROUP = "R0", "Diffusion-DRO"
GROUP_OF = {"dpo": PSO_GROUP, "hinge": PSO_GROUP, "plain-distilled": PSO_GROUP, "plain": None, "r0": R0_GROUP,
            "dro": DRO_GROUP, "lora": LORA_GROUP, "sara": SARA_GROUP, "full": FULL_GROUP}


@dataclass
class Params:
    base: str = field(default=BASE, metadata=spec("Base model", "The few-step (distilled) model to tune."))
    style: Style = field(default="thick", metadata=spec(
        "Targets", "A bundled style set (real digits), or your own drawings / uploads ('custom').",
        choices=("thick", "thin", "thick-0-4", "custom")))
    loss: LossForm = field(default="dpo", metadata=spec(
        "Loss", "What is optimised: PSO (DPO or hinge form), the plain diffusion loss (at the student's "
                "timesteps with the prior term: the fair baseline; or DreamBooth's), R0 (rewards only) or "
                "Diffusion-DRO (targets ranked above the model's own samples).",
        choices=("dpo", "hinge", "plain-distilled", "plain", "r0", "dro")))
    weights: tuning.WeightsKind = field(default="lora", metadata=spec(
        "Weights", "Which weights train: a LoRA adapter, SaRA's smallest-magnitude weights, or all (full).",
        choices=("lora", "sara", "full")))
    steps: int = field(default=150, metadata=spec("Training steps", "Optimizer steps (one batch of all targets each).",
                                                  minimum=1, maximum=2000, step=1))
    seed: int = field(default=0, metadata=spec("Seed", "Initialisation, references, noises and validation seeds.",
                                               minimum=0, maximum=MAX_SEED, step=1))
    beta: float = field(default=200.0, metadata=spec(
        "beta", "How sharply the pair margin counts (DPO: the logistic's slope; hinge: 1/margin; the "
                "released hinge scripts use 5).", minimum=0.1, maximum=10000.0, group=PSO_GROUP))
    prior_weight: float = field(default=0.5, metadata=spec(
        "Prior loss weight", "Weight of L_l, the fit to the model's own samples (against forgetting).",
        minimum=0.0, maximum=10.0, group=PSO_GROUP))
    neg_weight: float = field(default=0.1, metadata=spec(
        "Reference weight", "model_diff = L_w - this x L_l (the official code's neg_defactor, default 0.1).",
        minimum=0.0, maximum=1.0, group=PSO_GROUP))
    n_refs: int = field(default=4, metadata=spec("References per target", "Samples of the untuned model drawn once "
                                                 "per target's condition.", minimum=1, maximum=16, step=1,
                                                 group=PSO_GROUP))
    lora_rank: int = field(default=8, metadata=spec("LoRA rank", "Rank of the LoRA factors (alpha = rank).",
                                                    minimum=1, maximum=64, step=1, group=LORA_GROUP))
    sara_fraction: float = field(default=0.1, metadata=spec(
        "Trainable share", "The share of each weight tensor that trains: its smallest-magnitude entries "
                           "(the paper: the smallest 10-20% barely matter).", minimum=0.001, maximum=1.0,
        group=SARA_GROUP))
    sara_rank_weight: float = field(default=5e-4, metadata=spec(
        "Nuclear-norm weight", "lambda_rank of the low-rank penalty on one random large weight per step "
                               "(5e-4 in the release; 0: off).", minimum=0.0, maximum=1.0, group=SARA_GROUP))
    sara_progressive: bool = field(default=True, metadata=spec(
        "Re-select halfway", "Progressive adjustment: halfway, the set is re-selected on the current weights.",
        group=SARA_GROUP))
    sara_release_abs: bool = field(default=False, metadata=spec(
        "The release's abs() start", "Start the selected weights at their magnitudes, as the released optimizer "
                                     "does (their sign is dropped, so the model moves before any step); off: "
                                     "they keep their sign.", group=SARA_GROUP))
    full_lr: float = field(default=1e-4, metadata=spec(
        "Learning rate (all weights)", "AdamW's rate when every weight trains (the shared rate, 3e-4, wrecks "
                                       "the model; 1e-4 was chosen on the benchmark's selection seed).",
        minimum=1e-7, maximum=1e-2, group=FULL_GROUP))
    r0_class_weight: float = field(default=1.0, metadata=spec(
        "Digit reward weight", "Weight of log p(asked digit) under guide-clean (not the judge).",
        minimum=0.0, maximum=100.0, group=R0_GROUP))
    r0_style_weight: float = field(default=1.0, metadata=spec(
        "Style reward weight", "Weight of the soft stroke-thickness reward.", minimum=0.0, maximum=100.0,
        group=R0_GROUP))
    r0_weight_reg: float = field(default=10.0, metadata=spec(
        "Weight regularisation", "lambda of lambda ||theta - theta_0||^2 (0: off, the reward-hacking row; 10 was "
                                 "chosen on the benchmark's selection seed, where 1 and 0.1 hacked the reward).",
        minimum=0.0, maximum=1000.0, group=R0_GROUP))
    r0_random_eta: bool = field(default=True, metadata=spec(
        "Random eta", "Sample the generator with a random share of fresh noise per step (off: deterministic).",
        group=R0_GROUP))
    r0_normalise: bool = field(default=True, metadata=spec(
        "Normalised reward gradients", "Scale each reward's image gradient to unit norm per image.",
        group=R0_GROUP))
    dro_margin: float = field(default=1e-3, metadata=spec("Margin", "The hinge's margin (1e-3 in the release).",
                                                          minimum=0.0, maximum=1.0, group=DRO_GROUP))
    dro_sync_every: int = field(default=16, metadata=spec(
        "Policy sync every", "Steps between copies of the trained network into the sampling policy (16).",
        minimum=1, maximum=1000, step=1, group=DRO_GROUP))
    dro_buffer: int = field(default=4, metadata=spec("Replay buffer", "Trajectory batches kept (4 in the release).",
                                                     minimum=1, maximum=64, step=1, group=DRO_GROUP))
    lr: float = field(default=3e-4, metadata=spec("Learning rate", "AdamW on the LoRA factors or SaRA's entries "
                                                  "(all weights: their own rate, under All weights settings).",
                                                  minimum=1e-6, maximum=1e-1, advanced=True))
    validate_every: int = field(default=25, metadata=spec(
        "Validation every", "Draw the fixed-seed validation grid every this many steps.",
        minimum=1, maximum=1000, step=1, advanced=True))


@dataclass
class TrainProgress(Progress):
    """One training step (step 0: before training): ``info`` holds its losses; ``preview`` (also
    ``grid``) the validation samples when drawn, (classes, len(VALIDATION_STEPS), C, H, W)."""

    @property
    def grid(self) -> torch.Tensor | None:
        return self.preview

    @property
    def losses(self) -> dict[str, float]:
        return self.info or {}


@dataclass
class Tuned:
    """A finished (or stopped) tuning run: the tuned UNet (plain, or LoRA-wrapped), what made it,
    what to save (``state``), its costs (``stats``: trainable entries, optimizer bytes) and its base."""

    unet: torch.nn.Module
    params: dict
    history: list[dict]
    seconds: float
    targets: torch.Tensor
    labels: list
    base_model: DiffusionModel | None = field(default=None, repr=False)  # the (lent) model it was tuned from
    state: dict = field(default_factory=dict, repr=False)
    stats: dict = field(default_factory=dict)
    row: dict | None = None  # the comparison's measurements (:func:`compare`), when run() was asked to measure

    @property
    def parameters(self) -> dict:
        """The parameters that reproduce the run (the method contract's name for :attr:`params`)."""
        return self.params

    def model(self, name: str) -> DiffusionModel:
        """The tuned model as a manager entry: the base's description with this UNet."""
        return adapters.tuned_model(self.base_model, self.unet, name, self.params)


def check_targets(dm: DiffusionModel, images: torch.Tensor, labels: list) -> None:
    if len(images) != len(labels):
        raise ParamError(f"{len(images)} target images but {len(labels)} conditions")
    if not MIN_TARGETS <= len(images) <= MAX_TARGETS:
        raise ParamError(f"tuning needs {MIN_TARGETS} to {MAX_TARGETS} target images, got {len(images)}")
    if not torch.isfinite(images).all():
        raise ParamError("the target images contain NaN or infinite values")
    expected = dm.image_shape
    if tuple(images.shape[1:]) != expected:
        raise ParamError(f"target images must be {expected} (channels, height, width), got {tuple(images.shape[1:])}")


def check_params(p: Params) -> None:
    """Field limits, and the combinations that cannot train."""
    validate(p)
    if p.loss == "r0" and not (p.r0_class_weight or p.r0_style_weight):
        raise ParamError("R0 needs a reward: set the digit or the style reward weight above 0")


def references(fs: FewStep, labels: list, p: Params, weights) -> torch.Tensor:
    """``p.n_refs`` samples of the untuned model per target's condition, (N, n_refs, ...) in model
    space (a latent model's latents as sampled, not decoded and encoded again)."""
    ref_labels = [c for c in labels for _ in range(p.n_refs)]
    with torch.no_grad(), weights.reference() as ref:
        refs = FewStep(fs.dm, ref, fs.max_steps).sample(ref_labels, [p.seed * 7919 + i for i in range(len(ref_labels))],
                                                         fs.max_steps, decode=False).to(fs.device)
    return refs.view(len(labels), p.n_refs, *refs.shape[1:])


def offline_terms(fs: FewStep, p: Params, x_w: torch.Tensor, refs: torch.Tensor, cond: dict,
                  gen: torch.Generator, weights=None) -> dict[str, torch.Tensor]:
    """One step's PSO (or plain-loss) terms: a reference per target (of ``refs`` (N, n_refs, ...)), one
    distilled timestep and one noise per pair, then :func:`pso_loss` (or, for ``plain-distilled``, the
    same draws and :func:`distilled_plain_terms`); or :func:`plain_loss`. The DPO form's reference
    errors come from ``weights.reference()`` (the untuned network)."""
    if p.loss == "plain":
        return plain_loss(fs, x_w, cond, gen)
    n = len(x_w)
    x_l = refs[torch.arange(n), torch.randint(0, p.n_refs, (n,), generator=gen)]
    t = fs.timesteps[torch.randint(0, len(fs.timesteps), (n,), generator=gen)].to(fs.device)
    noise = torch.randn(x_w.shape, generator=gen).to(fs.device)
    l_w, l_l = pair_errors(fs, x_w, x_l, cond, t, noise)
    if p.loss == "plain-distilled":
        return distilled_plain_terms(l_w, l_l, prior_weight=p.prior_weight)
    ref_w = ref_l = None
    if p.loss == "dpo":
        with torch.no_grad(), weights.reference() as ref:
            ref_w, ref_l = pair_errors(FewStep(fs.dm, ref, fs.max_steps), x_w, x_l, cond, t, noise)
    return pso_loss(l_w, l_l, ref_w, ref_l, form=p.loss, beta=p.beta, prior_weight=p.prior_weight,
                    neg_weight=p.neg_weight)


def objective(fs: FewStep, p: Params, weights, images: torch.Tensor, labels: list,
              classifier: torch.nn.Module | None) -> Callable[[int, torch.Generator], dict]:
    """The chosen loss as ``terms(step, gen)`` (its one-time work, references or the buffer, done here)."""
    if p.loss == "r0":
        if classifier is None:
            raise ParamError(f"R0 needs its reward classifier ({REWARD_CLASSIFIER})")
        return lambda step, gen: r0_terms(fs, weights, labels, classifier, gen, class_weight=p.r0_class_weight,
                                          style_weight=p.r0_style_weight, weight_reg=p.r0_weight_reg,
                                          random_eta=p.r0_random_eta, normalise=p.r0_normalise)
    x_w = fs.encode(images)
    if p.loss == "dro":
        return DRO(fs, weights, x_w, labels, margin=p.dro_margin, sync_every=p.dro_sync_every, buffer_size=p.dro_buffer)
    refs = references(fs, labels, p, weights) if p.loss != "plain" else None
    cond = fs.condition(labels)
    return lambda step, gen: offline_terms(fs, p, x_w, refs, cond, gen, weights)


def make_optimizer(weights, p: Params) -> torch.optim.Optimizer:
    """AdamW on the trained tensors (``full_lr`` when every weight trains); SaRA's weight decay is its
    release's 1e-2, the others' 1e-6 (PSO's scripts)."""
    return torch.optim.AdamW(weights.parameters(), lr=p.full_lr if p.weights == "full" else p.lr,
                             weight_decay=1e-2 if p.weights == "sara" else 1e-6)


def tune(dm: DiffusionModel, images: torch.Tensor, labels: list, p: Params, *, classifier: torch.nn.Module | None = None,
         validation_labels: list | None = None, stop: Callable[[], bool] = lambda: False,
         sampler_steps: int = 4) -> Iterator[TrainProgress | Tuned]:
    """Tune an already lent ``dm`` on target ``images`` (N, C, H, W) in [-1, 1] with per-image
    conditions ``labels`` by ``p.loss`` on ``p.weights`` (``classifier``: R0's reward model). Yields
    :class:`TrainProgress` each step (with a validation grid every ``p.validate_every`` steps and at
    the start and end), then :class:`Tuned`. ``stop()`` ends training early; what trained so far is kept.
    ``sampler_steps``: the DDIM steps the model samples with (its "distilled timesteps"; 4 for the
    few-step students, more for a multi-step base such as ``digits-cond`` in the benchmark)."""
    check_params(p)
    check_targets(dm, images, labels)
    if p.loss == "r0" and (dm.conditioning != "class" or dm.info.get("domain", "digits") != "digits"):
        raise ParamError("R0's rewards read digits (a digit classifier and the stroke thickness): tune a digits model")
    t0 = time.perf_counter()
    weights = tuning.make_weights(p.weights, dm.unet, rank=p.lora_rank, seed=p.seed, fraction=p.sara_fraction,
                                  rank_weight=p.sara_rank_weight, progressive=p.sara_progressive,
                                  keep_sign=not p.sara_release_abs)
    fs = FewStep(dm, weights.net, sampler_steps)
    index_b = tuning.index_bytes(weights)  # SaRA's first (largest) set
    opt = make_optimizer(weights, p)
    gen, pick = torch.Generator().manual_seed(p.seed), random.Random(p.seed)
    terms_of = objective(fs, p, weights, images, list(labels), classifier)
    val_labels = validation_labels or sorted(set(labels), key=str)[:8]
    val_seeds = [p.seed + 1000 + i for i in range(len(val_labels))]

    def grid():
        weights.net.eval()
        rows = torch.stack([fs.sample(val_labels, val_seeds, s) for s in VALIDATION_STEPS], 1)
        weights.net.train()
        return rows  # (classes, steps, C, H, W)

    history, opt_bytes = [], 0
    yield TrainProgress(0, p.steps, info={}, preview=grid())
    step = 0
    for step in range(1, p.steps + 1):
        weights.net.train()
        terms = terms_of(step, gen)
        terms.update(weights.penalty(pick))
        loss = terms["loss"] + terms.get("rank", 0.0)
        optimizer_step(loss, opt, weights.parameters(), clip=1.0)
        opt_bytes = max(opt_bytes, tuning.optimizer_bytes(opt))
        if weights.progress(step, p.steps):
            opt = make_optimizer(weights, p)
        losses = {k: float(v.detach()) for k, v in terms.items()}
        if not all(math.isfinite(v) for v in losses.values()):
            raise ParamError(f"training diverged at step {step} (loss {losses['loss']}); lower the learning rate or beta")
        history.append({"step": step, "seconds": round(time.perf_counter() - t0, 2), **losses})
        last = step == p.steps or stop()
        yield TrainProgress(step, p.steps, info=losses, preview=grid() if last or step % p.validate_every == 0 else None)
        if last:
            break
    parameters = {"method": "tune", **asdict(p), "trained_steps": step, "sampler_steps": sampler_steps,
                  "targets": [str(c) for c in labels],
                  "studio_version": __version__}
    stats = {"trainable": weights.initial_count if p.weights == "sara" else tuning.trainable_count(weights),
             "optimizer_bytes": opt_bytes, "index_bytes": index_b}
    yield Tuned(tuning.plain_network(weights), parameters, history, time.perf_counter() - t0, images.cpu(),
                list(labels), base_model=dm, state=weights.state(), stats=stats)


def run_tune(dm: DiffusionModel, images: torch.Tensor, labels: list, p: Params, **kwargs) -> Tuned:
    """:func:`tune` to the end (notebooks, the benchmark)."""
    return run_to_end(tune(dm, images, labels, p, **kwargs))


def bases(manager) -> list[str]:
    """The manager's few-step models (those Tune tunes)."""
    return [k for k in manager.keys() if manager.info(k).get("few_step")]


def run(p: Params, manager, *, stop: Callable[[], bool] = lambda: False, images: torch.Tensor | None = None,
        labels: list | None = None, measure: bool = False) -> Iterator[TrainProgress | Tuned]:
    """Tune ``p.base`` (lent by ``manager`` for the run; only a copy trains) towards ``images``
    (N, C, H, W) in [-1, 1] with conditions ``labels`` (drawings / uploads; default: the bundled
    style set ``p.style``). Yields :class:`TrainProgress`, then one :class:`Tuned`, also when
    ``stop()`` ended the run early. Register it with :func:`register`. With ``measure`` (a digits base),
    the result carries its comparison row (:func:`compare`, some seconds more)."""
    check_params(p)
    if images is None:
        if p.style == "custom":
            raise ParamError(f"'custom' targets are your own: draw or upload {MIN_TARGETS} to {MAX_TARGETS} images")
        images, labels = digits.style_set(p.style)
    if p.base not in manager:
        raise ParamError(f"unknown base model {p.base!r}; choose one of {', '.join(bases(manager))}")
    reward = manager.use(REWARD_CLASSIFIER) if p.loss == "r0" else contextlib.nullcontext()
    with manager.use(p.base) as dm, reward as classifier:
        for item in tune(dm, images, list(labels or []), p, stop=stop, classifier=classifier):
            if isinstance(item, Tuned) and measure and dm.info.get("domain") == "digits" and JUDGES <= set(manager.keys()):
                item.row = compare(item, manager)
            yield item


def compare(tuned: Tuned, manager, per_class: int | None = None) -> dict:
    """The comparison table's row for a run (:func:`studio.train.tuning.measure`, judged by
    ``judge-digits`` and ``fd-digits`` and the independent style judge, never by what trained it;
    no style rate for custom targets, whose style no judge knows)."""
    style = digits.set_style(tuned.params["style"]) if tuned.params["style"] != "custom" else None
    with manager.use("judge-digits") as judge, manager.use("fd-digits") as fd_net:
        steps = tuned.params.get("sampler_steps", 4)
        row = tuning.measure(FewStep(tuned.base_model, steps=steps), FewStep(tuned.base_model, tuned.unet, steps),
                             judge, fd_net,
                             targets=tuned.labels, style=style, per_class=per_class or COMPARE_PER_CLASS,
                             seed=tuned.params["seed"], n_boot=COMPARE_BOOT)
    return {"loss": tuned.params["loss"], "weights": tuned.params["weights"], **row, **tuned.stats,
            "seconds": round(tuned.seconds, 1), "steps": tuned.params["trained_steps"]}


def register(tuned: Tuned, manager, name: str, replace: bool = False) -> None:
    """Register the tuned model under ``name`` (RuntimeError while a replaced one is in use)."""
    adapters.register_tuned(manager, name, tuned.model(name), tuned.params["base"], replace=replace)


def save(tuned: Tuned, name: str, manager, root: Path | None = None) -> str:
    """Save what trained under the model name ``name`` (:func:`studio.core.adapters.save_tuned`, in
    :func:`~studio.core.adapters.tuned_dir` unless ``root``) and register it; returns the name."""
    name = adapters.check_name(name)
    if name in manager:
        raise ParamError(f"a model named {name!r} already exists; choose another name")
    adapters.save_tuned(tuned.state, {**tuned.params, "seconds": round(tuned.seconds, 1)}, name, root)
    register(tuned, manager, name)
    return name
