"""Tune benchmark: the few-step student (BOOT) and PSO vs plain diffusion-loss tuning, side by side.

Models: ``digits-fewstep`` (the few-step denoiser D distilled without data from ``digits-cond``,
:mod:`studio.train.boot`; its BOOT student g ships in the same entry, ``boot/``) and the teacher.
Judges: ``fd-digits`` and ``judge-digits``, which no method here trains or reads while training.

* **The style measure, validated on real digits**: the share of the 360 test digits that
  :func:`studio.data.digits.on_style` calls thick (expected about 20%: the threshold is the
  training digits' 80th percentile), thin, and the share once every test digit is dilated by one
  pixel (should be nearly all thick).
* **The student**: ``N_PER_CLASS`` samples per digit (sample i from seed 9000 + i) at 1, 2 and 4
  deterministic DDIM steps on the distilled timesteps (its sampler), and with LCM's stochastic
  re-noising for comparison; BOOT's g at one step; the teacher with DDIM at 50 (and 4) steps under the same
  guidance its targets used (1.5). FD-digits against the 360 test digits (95% bootstrap interval;
  a toy-scale Frechet distance, **not FID**) and the judge's accuracy on the asked digit.
* **PSO**: ``digits-fewstep`` tuned on the bundled *thick* style set (16 real digits) by offline
  PSO (DPO form and hinge form) and by the plain diffusion loss (the baseline), same LoRA rank,
  steps, learning rate and seed. For each, at 1, 2, 4 steps on ``N_EVAL_PER_CLASS`` fresh samples
  per digit: the style rate (share called thick), the judge's accuracy on the asked digit (content
  kept), FD-digits to the *untuned* student's samples at the same steps and seeds (drift), and
  training seconds on this machine (2 threads).
* **Online PSO**: ``ONLINE_ITERATIONS`` updates, each two 4-step trajectories per digit ranked by
  stroke thickness; the same three figures at 4 steps.

Writes ``benchmarks/results/pso.json`` and ``pso.md``. Run ``python benchmarks/bench_pso.py
[--quick]`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from studio.core import guidance as G
from studio.core import metrics
from studio.core.device import make_generator
from studio.core.loading import ZOO_DIR, load_module_folder, load_zoo
from studio.core.sampling import make_scheduler, run_to_end, sample
from studio.data import digits
from studio.methods import tune
from studio.train import boot
from studio.train.pso import run_online
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
SEED = 9000
N_PER_CLASS = 100
N_EVAL_PER_CLASS = 50
STEPS = (1, 2, 4)
TEACHER_STEPS = (4, 50)
TUNE = tune.Params(steps=150)  # the tab's defaults
METHODS = {"PSO, DPO form": "dpo", "PSO, hinge form": "hinge", "plain diffusion loss": "plain"}
ONLINE_ITERATIONS = 40
CHUNK = 500


def labels_and_seeds(per_class: int) -> tuple[list[int], list[int]]:
    labels = [c for c in range(10) for _ in range(per_class)]
    return labels, [SEED + i for i in range(len(labels))]


def fewstep_samples(fs: boot.FewStep, per_class: int, steps: int) -> torch.Tensor:
    labels, seeds = labels_and_seeds(per_class)
    return torch.cat([fs.sample(labels[i:i + CHUNK], seeds[i:i + CHUNK], steps) for i in range(0, len(labels), CHUNK)])


@torch.no_grad()
def teacher_samples(per_class: int, steps: int) -> torch.Tensor:
    dm = load_zoo("digits-cond")
    labels, seeds = labels_and_seeds(per_class)
    out = []
    for i in range(0, len(labels), CHUNK):
        c = torch.tensor(labels[i:i + CHUNK])
        denoise = G.cfg(dm.model_fn, {"class_labels": c}, {"class_labels": torch.full_like(c, 10)}, boot.CFG)
        out.append(run_to_end(sample(denoise, make_scheduler("ddim", dm.scheduler_config), (len(c), 1, 16, 16),
                                     num_inference_steps=steps, generator=[make_generator(s) for s in seeds[i:i + CHUNK]])))
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def lcm_samples(dm, per_class: int, steps: int) -> torch.Tensor:
    """The same model with LCM's stochastic re-noising between steps instead of DDIM."""
    labels, seeds = labels_and_seeds(per_class)
    out = []
    for i in range(0, len(labels), CHUNK):
        c = torch.tensor(labels[i:i + CHUNK])
        scheduler = make_scheduler("lcm", dm.scheduler_config, dm.prediction_type, original_inference_steps=4)
        out.append(run_to_end(sample(lambda x, t: dm.unet(x, t, class_labels=c).sample, scheduler, (len(c), 1, 16, 16),
                                     num_inference_steps=steps, prediction_type=dm.prediction_type,
                                     generator=[make_generator(s) for s in seeds[i:i + CHUNK]])))
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def boot_samples(per_class: int) -> torch.Tensor | None:
    folder = ZOO_DIR / "digits-fewstep" / "boot"
    if not folder.is_dir():
        return None
    g = load_module_folder(folder).float().eval()
    labels, seeds = labels_and_seeds(per_class)
    eps = torch.cat([torch.randn(1, 1, 16, 16, generator=make_generator(s)) for s in seeds])
    c = torch.tensor(labels)
    return torch.cat([g(eps[i:i + CHUNK], torch.zeros(len(c[i:i + CHUNK]), dtype=torch.long),
                        class_labels=c[i:i + CHUNK]).sample for i in range(0, len(c), CHUNK)]).clamp(-1, 1)


def quality(fd_net, judge, x: torch.Tensor, labels: list[int], reference: torch.Tensor) -> dict:
    fd = metrics.frechet(fd_net, x, reference)
    acc = metrics.digits_accuracy(judge, x, labels)
    return {"fd": [fd.value, fd.low, fd.high], "judge_acc": [acc.value, acc.low, acc.high]}


def style_row(fd_net, judge, x: torch.Tensor, labels: list[int], untuned: torch.Tensor | None) -> dict:
    rate = metrics.bootstrap_mean(digits.on_style(x, "thick").astype(float))
    acc = metrics.digits_accuracy(judge, x, labels)
    row = {"style_rate": [rate.value, rate.low, rate.high], "judge_acc": [acc.value, acc.low, acc.high],
           "thickness": float(np.mean(digits.thickness(x)))}
    if untuned is not None:
        fd = metrics.frechet(fd_net, x, untuned)
        row["fd_to_untuned"] = [fd.value, fd.low, fd.high]
    return row


def main(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    per_class, eval_per_class = (20, 20) if quick else (N_PER_CLASS, N_EVAL_PER_CLASS)
    fd_net, judge = load_zoo("fd-digits"), load_zoo("judge-digits")
    test = digits.load("test")
    test_x = torch.from_numpy(test.images)
    out: dict = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "quick": quick}

    out["style_measure"] = {
        "threshold_thick": digits.style_threshold("thick"), "threshold_thin": digits.style_threshold("thin"),
        "test_thick": float(digits.on_style(test_x, "thick").mean()),
        "test_thin": float(digits.on_style(test_x, "thin").mean()),
        "test_dilated_thick": float(digits.on_style(digits.dilate(test_x), "thick").mean()),
        "targets_thick": float(digits.on_style(digits.style_set("thick")[0], "thick").mean()),
    }

    dm = load_zoo("digits-fewstep")
    fs = boot.FewStep(dm)
    labels, _ = labels_and_seeds(per_class)
    student = {}
    for steps in STEPS:
        student[f"digits-fewstep, {steps} step(s)"] = quality(fd_net, judge, fewstep_samples(fs, per_class, steps),
                                                              labels, test_x)
    for steps in STEPS[1:]:
        student[f"digits-fewstep, {steps} LCM step(s)"] = quality(fd_net, judge, lcm_samples(dm, per_class, steps),
                                                                  labels, test_x)
    g = boot_samples(per_class)
    if g is not None:
        student["BOOT g, 1 step"] = quality(fd_net, judge, g, labels, test_x)
    for steps in TEACHER_STEPS:
        student[f"teacher DDIM-{steps} (CFG {boot.CFG})"] = quality(fd_net, judge, teacher_samples(per_class, steps),
                                                                    labels, test_x)
    out["student"] = student
    out["student_train"] = json.loads((ZOO_DIR / "MANIFEST.json").read_text())["digits-fewstep"].get("train_seconds")

    eval_labels, _ = labels_and_seeds(eval_per_class)
    untuned = {s: fewstep_samples(fs, eval_per_class, s) for s in STEPS}
    targets, target_labels = digits.style_set("thick")
    rows = {"untuned": {s: style_row(fd_net, judge, untuned[s], eval_labels, None) for s in STEPS}}
    seconds = {"untuned": 0.0}
    p = replace(TUNE, steps=30) if quick else TUNE
    for name, loss in METHODS.items():
        tuned = tune.run_tune(dm, targets, target_labels, replace(p, loss=loss))
        seconds[name] = tuned.seconds
        tfs = boot.FewStep(dm, tuned.unet)
        rows[name] = {s: style_row(fd_net, judge, fewstep_samples(tfs, eval_per_class, s), eval_labels, untuned[s])
                      for s in STEPS}
    t0 = time.perf_counter()
    unet, history = run_online(dm, list(range(10)), digits.thickness,
                               iterations=10 if quick else ONLINE_ITERATIONS, seed=0)
    seconds["online PSO"] = time.perf_counter() - t0
    rows["online PSO"] = {4: style_row(fd_net, judge, fewstep_samples(boot.FewStep(dm, unet), eval_per_class, 4),
                                       eval_labels, untuned[4])}
    out["pso"] = {name: {str(s): r for s, r in by_steps.items()} for name, by_steps in rows.items()}
    out["pso_seconds"] = seconds
    out["pso_params"] = {k: v for k, v in vars(p).items()}
    out["online_history"] = history
    out["goals"] = goals(out)
    return out


def goals(out: dict) -> list[str]:
    s = out["student"]
    four = s["digits-fewstep, 4 step(s)"]
    ddim50 = next(v for k, v in s.items() if k.startswith("teacher DDIM-50"))
    lines = [
        _goal(f"4-step student FD-digits within 1.5x of the teacher's DDIM-50: {four['fd'][0]:.1f} vs 1.5 x "
              f"{ddim50['fd'][0]:.1f} = {1.5 * ddim50['fd'][0]:.1f}", four["fd"][0] <= 1.5 * ddim50["fd"][0]),
        _goal(f"4-step student judge accuracy on the asked digit >= 85%: {four['judge_acc'][0]:.3f}",
              four["judge_acc"][0] >= 0.85),
    ]
    pso, untuned = out["pso"]["PSO, DPO form"], out["pso"]["untuned"]
    r0, r1 = untuned["4"]["style_rate"][0], pso["4"]["style_rate"][0]
    lines.append(_goal(f"PSO (DPO form) 4-step style rate at least doubles: {r0:.3f} -> {r1:.3f}", r1 >= 2 * r0))
    a0, a1 = untuned["4"]["judge_acc"][0], pso["4"]["judge_acc"][0]
    lines.append(_goal(f"PSO (DPO form) 4-step judge accuracy within 5 points of the untuned student: {a0:.3f} -> "
                       f"{a1:.3f}", a1 >= a0 - 0.05))
    plain = out["pso"]["plain diffusion loss"]
    for steps in ("1", "2"):
        fp, fq = plain[steps]["fd_to_untuned"][0], pso[steps]["fd_to_untuned"][0]
        lines.append(_goal(f"plain-loss tuning drifts more than PSO at {steps} step(s) (FD-digits to the untuned "
                           f"student): {fp:.1f} vs {fq:.1f}", fp > fq))
    sec = out["pso_seconds"]["PSO, DPO form"]
    lines.append(_goal(f"default style set trains in under 3 minutes on this machine: {sec:.0f} s", sec < 180))
    return lines


def _goal(text: str, met: bool) -> str:
    return f"{text}: {'MET' if met else 'MISSED'}"


def _ci(v) -> str:
    return f"{v[0]:.1f} ({v[1]:.1f}..{v[2]:.1f})" if v[0] > 2 else f"{v[0]:.3f} ({v[1]:.3f}..{v[2]:.3f})"


def markdown(out: dict) -> str:
    m = out["style_measure"]
    lines = [f"Machine: {out['machine']}, {out['date']}. FD-digits is a toy-scale Frechet distance on `fd-digits` "
             "features, **not FID**; 95% bootstrap intervals.", "",
             f"Style measure (stroke thickness 2 x ink area / ink perimeter; thick = at least {m['threshold_thick']:.2f} "
             f"px, the training digits' 80th percentile; thin = at most {m['threshold_thin']:.2f} px, the 20th): "
             f"test digits called thick {m['test_thick']:.3f}, thin {m['test_thin']:.3f}; the same digits dilated by "
             f"one pixel called thick {m['test_dilated_thick']:.3f}; the bundled thick targets {m['targets_thick']:.3f}.",
             "", "| model | FD-digits to the test digits | judge accuracy on the asked digit |", "|---|---|---|"]
    for name, r in out["student"].items():
        lines.append(f"| {name} | {_ci(r['fd'])} | {_ci(r['judge_acc'])} |")
    lines += ["", f"PSO on the thick style set ({out['pso_params']['steps']} steps, LoRA rank "
              f"{out['pso_params']['lora_rank']}, beta {out['pso_params']['beta']}, lr {out['pso_params']['lr']}):", "",
              "| tuning | steps | style rate (thick) | judge accuracy | FD-digits to untuned | mean thickness | "
              "training seconds |", "|---|---|---|---|---|---|---|"]
    for name, by_steps in out["pso"].items():
        for steps, r in by_steps.items():
            fd = _ci(r["fd_to_untuned"]) if "fd_to_untuned" in r else "-"
            lines.append(f"| {name} | {steps} | {_ci(r['style_rate'])} | {_ci(r['judge_acc'])} | {fd} | "
                         f"{r['thickness']:.2f} | {out['pso_seconds'].get(name, 0):.0f} |")
    lines += ["", "Goals:", ""] + [f"- {g}" for g in out["goals"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    result = main(args.quick)
    (ROOT / "results").mkdir(exist_ok=True)
    name = "pso-quick" if args.quick else "pso"
    (ROOT / "results" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / "results" / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
