"""Recipes for the Guide tab's classifiers (``studio train guide-...``); none of them is a judge.

* ``guide-clean``: the *off-the-shelf* classifier. A :class:`GuideNet` trained on clean digits
  (training split, light shift / pixel-noise augmentation, its own seed); it never sees x_t.
* ``guide-noisy``: Dhariwal & Nichol's noise-aware classifier f(x_t, t), a time-conditional
  GuideNet trained from scratch on ``q_sample(x0, t)`` of labelled training digits, t uniform
  over the 1000 training steps of ``digits-cond``'s schedule.
* ``guide-ppap``: PPAP's N = 5 experts by **data-free** distillation. Images are
  ``digits-cond``'s own unconditional samples (null class, DDIM 25 steps, as PPAP samples its
  ADM model); the teacher is the frozen ``guide-clean`` on x0, sharpened by softmax temperature
  0.25; the student (``guide-clean`` + peft LoRA rank 16, alpha 8 on the stem and every block's
  conv1 / conv2, plus trainable BatchNorm) sees ``q_sample(x0, t)`` with t uniform in its bin;
  loss ``KL(teacher || student)``. As in the official ``classifier_train.py`` the experts are
  trained one after another with the same model and optimizer, expert i + 1 starting from
  expert i, and the learning rate annealed linearly over the whole run.
* ``guide-experts``: the comparison PPAP draws, N = 5 *fully* fine-tuned experts (official
  ``multi_experts`` mode): all weights of ``guide-clean`` trained per bin on labelled noisy
  training digits with cross-entropy, same sequential warm start.

Expert entries store only what each expert trains (LoRA factors and BatchNorm state for
``guide-ppap``, full weights for ``guide-experts``) on top of ``guide-clean``.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from studio.data import digits
from studio.nets.classifiers import GuideNet, expert_state, lora_config, make_lora, parameter_count
from studio.train.common import (RUNS_DIR, ZOO_DIR, StepLog, Timer, machine_description, make_accelerator,
                                 optimizer_step, process_seed, random_shift, weights_digest, write_manifest_entry)

N_EXPERTS = 5
T_TRAIN = 1000
KD_TEMPERATURE = 0.25
SYNTHETIC_IMAGES = 6000
SYNTHETIC_STEPS = 25
SPECS = {  # name: (seed, steps)
    "guide-clean": (21, 1500),
    "guide-noisy": (22, 3000),
    "guide-ppap": (23, 2000),
    "guide-experts": (24, 2000),
}
NAMES = tuple(SPECS)
WIDTH = 48


def labelled_batch(gen: torch.Generator, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Training digits with a random one-pixel shift and a little pixel noise."""
    data = digits.load("train")
    idx = torch.randint(len(data.labels), (n,), generator=gen).numpy()
    x = random_shift(torch.from_numpy(data.images[idx]), gen, 1)
    x = x + 0.05 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x, torch.from_numpy(data.labels[idx])


@functools.lru_cache(maxsize=1)
def training_scheduler():
    """``digits-cond``'s training schedule (its recipe's scheduler: linear betas 1e-4..0.02, 1000 steps)."""
    from studio.train.diffusion import noise_scheduler

    return noise_scheduler()


def q_sample(x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x_t ~ q(x_t | x_0)`` at timesteps ``t`` (B,) of ``digits-cond``'s training schedule."""
    return training_scheduler().add_noise(x0, torch.randn(x0.shape, generator=gen), t)


def bin_timesteps(i: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """t uniform in bin i: ``[i*T/N, (i+1)*T/N)``."""
    lo, hi = i * T_TRAIN // N_EXPERTS, (i + 1) * T_TRAIN // N_EXPERTS
    return torch.randint(lo, hi, (n,), generator=gen)


@torch.no_grad()
def synthetic_digits(n: int = SYNTHETIC_IMAGES, seed: int = 5, batch: int = 500) -> torch.Tensor:
    """``digits-cond``'s unconditional samples (null class, DDIM 25 steps), cached in runs/."""
    from safetensors.torch import load_file

    from studio.core.loading import load_zoo
    from studio.core.sampling import make_scheduler, run_to_end, sample
    from studio.core.device import make_generator

    cache = RUNS_DIR / "guide-samples" / f"digits_uncond_{n}_{seed}.safetensors"
    if cache.exists():
        return load_file(cache)["images"]
    dm = load_zoo("digits-cond")
    null = dm.info.get("null_class", digits.NUM_CLASSES)
    parts = []
    for i in tqdm(range(0, n, batch), desc="synthetic digits"):
        m = min(batch, n - i)
        sched = make_scheduler("ddim", dm.scheduler_config, dm.prediction_type)
        denoise = lambda x, t: dm.model_fn(x, t, {"class_labels": torch.full((x.shape[0],), null)})  # noqa: E731
        parts.append(run_to_end(sample(denoise, sched, (m, *dm.sample_shape), num_inference_steps=SYNTHETIC_STEPS,
                                       generator=[make_generator(seed * 1_000_003 + i + j) for j in range(m)])))
    images = torch.cat(parts).clamp(-1, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, cache)
    return images


def _export(name: str, files: dict[str, dict[str, torch.Tensor]], info: dict, manifest: dict,
            net: GuideNet | None = None) -> None:
    folder = ZOO_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if net is not None:
        net.to(torch.float16).save_pretrained(folder / "model", safe_serialization=True)
        net.to(torch.float32)
    for rel, state in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in state.items()}, folder / rel)
    (folder / "studio.json").write_text(json.dumps(info, indent=2) + "\n")
    write_manifest_entry(name, {"machine": machine_description(), **manifest})


@torch.no_grad()
def accuracy_by_bin(classifier, n_bins: int = N_EXPERTS, seed: int = 99) -> list[float]:
    """Accuracy on noised *test* digits, t uniform in each bin (one fixed noise draw per bin)."""
    test = digits.load("test")
    x0, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_bins):
        t = bin_timesteps(i, len(y), gen)
        pred = torch.cat([classifier(q_sample(x0[j:j + 120], t[j:j + 120], gen), t[j:j + 120]).argmax(-1)
                          for j in range(0, len(y), 120)])
        out.append(round(float((pred == y).float().mean()), 4))
    return out


def _optimizer(params, lr: float, steps: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))  # anneal_lr
    return opt, sched


def train_single(name: str, seed: int, steps: int) -> dict:
    """``guide-clean`` (clean inputs) or ``guide-noisy`` (time-conditional, noised inputs)."""
    noisy = name == "guide-noisy"
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(process_seed(seed, accelerator))
    net = GuideNet(width=WIDTH, time_conditional=noisy)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net, opt = accelerator.prepare(net, opt)
    device, log = accelerator.device, StepLog(accelerator, name)
    timer = Timer()
    net.train()
    for step in tqdm(range(steps), desc=name, disable=not accelerator.is_main_process):
        x, y = labelled_batch(gen)
        t = torch.randint(0, T_TRAIN, (len(y),), generator=gen)
        x, y, t_in = (x if not noisy else q_sample(x, t, gen)).to(device), y.to(device), t.to(device)
        loss = F.cross_entropy(net(x, t_in) if noisy else net(x), y)
        optimizer_step(loss, opt, clip=None, scheduler=sched, accelerator=accelerator)
        log.write(step + 1, loss)
    seconds = timer.seconds
    net = accelerator.unwrap_model(net).cpu().eval()
    result = {"name": name, "seconds": round(seconds, 1), "processes": accelerator.num_processes,
              "weights_sha256": weights_digest(net)}
    if not accelerator.is_main_process:  # evaluation and export: the main process's
        return result
    clean_acc = evaluate_clean(net)
    quality = {"clean_test_accuracy": clean_acc, "noised_test_accuracy_by_bin": accuracy_by_bin(net)}
    info = {"kind": "classifier", "model_class": "GuideNet", "domain": "digits", "role": "guidance",
            "noise_aware": noisy}
    _export(name, {}, info, {"recipe": f"studio train {name}", "kind": "classifier", "train_steps": steps,
                             "train_seconds": round(seconds, 1), "seed": seed, "params": parameter_count(net),
                             "trainable_params": parameter_count(net), "quality": quality}, net=net)
    return {**result, **quality}


@torch.no_grad()
def evaluate_clean(net) -> float:
    test = digits.load("test")
    return round(float((net(torch.from_numpy(test.images), 0).argmax(-1).numpy() == test.labels).mean()), 4)


def train_experts(name: str, seed: int, steps: int) -> dict:
    """``guide-ppap`` (LoRA, data-free KD) or ``guide-experts`` (full fine-tune, labelled)."""
    from studio.core.loading import load_zoo

    lora = name == "guide-ppap"
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(process_seed(seed, accelerator))
    teacher = load_zoo("guide-clean")
    student = make_lora(teacher, lora_config()) if lora else load_zoo("guide-clean").requires_grad_(True)
    trainable = [p for p in student.parameters() if p.requires_grad]
    per_expert = steps // N_EXPERTS
    opt, sched = _optimizer(trainable, lr=1e-3, steps=per_expert * N_EXPERTS)
    with accelerator.main_process_first():  # the main process writes the cache, the others read it
        pool = synthetic_digits() if lora else None
    wrapped, opt = accelerator.prepare(student, opt)
    device, log = accelerator.device, StepLog(accelerator, name)
    teacher.to(device)  # frozen (the student is a copy), read on this process's device
    timer = Timer()
    files, by_bin = {}, []
    for i in range(N_EXPERTS):
        wrapped.train()
        for step in tqdm(range(per_expert), desc=f"{name} expert {i}", disable=not accelerator.is_main_process):
            if lora:
                x0 = pool[torch.randint(len(pool), (128,), generator=gen)]
                with torch.no_grad():
                    target = F.softmax(teacher(x0.to(device)) / KD_TEMPERATURE, -1)
                t = bin_timesteps(i, len(x0), gen)
                loss = F.kl_div(F.log_softmax(wrapped(q_sample(x0, t, gen).to(device)), -1), target,
                                reduction="batchmean")
            else:
                x0, y = labelled_batch(gen)
                t = bin_timesteps(i, len(y), gen)
                loss = F.cross_entropy(wrapped(q_sample(x0, t, gen).to(device)), y.to(device))
            optimizer_step(loss, opt, clip=None, scheduler=sched, accelerator=accelerator)
            log.write(i * per_expert + step + 1, loss, expert=i)
        student.eval()
        if accelerator.is_main_process:  # the expert's weights (equal on every process) and its evaluation
            files[f"experts/expert_{i}.safetensors"] = {k: v.cpu() for k, v in expert_state(student, lora).items()}
            by_bin.append(accuracy_by_bin(student if device.type == "cpu" else copy.deepcopy(student).cpu()))
    seconds = timer.seconds
    result = {"name": name, "seconds": round(seconds, 1), "processes": accelerator.num_processes,
              "weights_sha256": weights_digest(student)}
    if not accelerator.is_main_process:
        return result
    per = parameter_count(student, trainable_only=True)
    base_params = parameter_count(teacher)
    info = {"kind": "experts", "base": "guide-clean", "adapter": "lora" if lora else "full",
            "n_experts": N_EXPERTS, "num_train_timesteps": T_TRAIN, "domain": "digits", "role": "guidance",
            **({"lora": lora_config()} if lora else {})}
    quality = {"noised_test_accuracy_by_bin": [row[i] for i, row in enumerate(by_bin)],
               "every_expert_by_bin": by_bin}
    _export(name, files, info, {
        "recipe": f"studio train {name}", "kind": "experts", "train_steps": per_expert * N_EXPERTS,
        "train_seconds": round(seconds, 1), "seed": seed, "base_params": base_params,
        "trainable_params_per_expert": per, "trainable_params": per * N_EXPERTS,
        "data": "digits-cond unconditional samples (data-free)" if lora else "labelled training digits",
        "quality": quality})
    return {**result, "trainable_params": per * N_EXPERTS, **quality}


def train(name: str, seed: int | None = None, steps: int | None = None) -> dict:
    default_seed, default_steps = SPECS[name]
    seed = seed or default_seed
    steps = steps or default_steps
    if name in ("guide-clean", "guide-noisy"):
        return train_single(name, seed, steps)
    return train_experts(name, seed, steps)
