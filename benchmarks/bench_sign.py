"""Edit benchmark (SIGN): one-step idempotent generation and zero-shot editing, side by side.

Models: ``sign-digits`` (f distilled from ``digits-cond``, :mod:`studio.train.sign`),
``ign-digits`` (plain IGN, the same network without the teacher) and the teacher itself
(``digits-cond``, null class, deterministic DDIM). Judges: ``fd-digits`` and ``judge-digits``,
neither trained by any method here.

* **Generation vs evaluations (NFE)**: ``N_GEN`` noises (noise i from seed 9000 + i, the same
  for every method); f^1, f^2, f^3 (1, 2, 3 evaluations) and the teacher's DDIM at 1, 2, 4, 10,
  50 steps. FD-digits of the samples against the 360 test digits (95% bootstrap interval; the
  floor, ``N_GEN`` *training* digits against the test digits, is printed beside it: small samples
  in 64 feature dimensions carry a bias); judge class-entropy of the samples (ln 10 = 2.303 is
  every class equally often; low = mode collapse) and the smallest class share.
* **Idempotence**: ``||f(f(x)) - f(x)|| / ||f(x)||`` for x = f(z) (f's samples), for x = z (the
  issue's ``||f(f(z)) - f(z)|| / ||f(z)||``) and for x = the test digits; and the reconstruction
  error ``||f(x) - x|| / ||x||`` on the test digits (data should be fixed points).
* **Editing**: every test digit corrupted (a) by Gaussian noise, sigma 0.5, (b) by a random box
  hiding 25% of it (hidden pixels set to 0); the judge's accuracy on the *true* digit and PSNR to
  the clean digit for the corrupted input, f^k (k = 1..4 evaluations) and SDEdit with the teacher
  at 1, 2, 4 evaluations for strengths 0.1, 0.2, 0.3, 0.5, 0.7 (each row says its strength; the best
  SDEdit row per evaluation count is the one to beat).
* **Stability**: SIGN and plain IGN each trained from 3 seeds at a short, equal budget (SIGN 500
  warm-up + 100 joint steps, IGN 600 steps; ``studio.train.sign.SHORT``), FD-digits of f^1 for
  every seed: the spread across seeds is the instability the paper fixes.
* **Speed**: milliseconds per image for one application of f and for one teacher step (batch 100,
  2 threads).

Writes ``benchmarks/results/sign.json`` and ``sign.md``. Run ``python benchmarks/bench_sign.py
[--quick]`` (or ``make bench``). The stability runs train (and cache in ``runs/``) if absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.device import make_generator
from studio.core.loading import load_zoo
from studio.data import digits
from studio.methods import edit
from studio.train import sign
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
SEED = 9000
N_GEN = 1000
TEACHER_STEPS = (1, 2, 4, 10, 50)
F_STEPS = (1, 2, 3)
EDIT_K = (1, 2, 3, 4)
SDEDIT_EVALS = (1, 2, 4)
SDEDIT_STRENGTHS = (0.1, 0.2, 0.3, 0.5, 0.7)  # the best per evaluation count is the baseline (chosen on the test digits: favours SDEdit)
CORRUPTIONS = {"noise sigma 0.5": ("noise", 0.5), "box 25%": ("box", 0.25)}
STABILITY_SEEDS = (0, 1, 2)


def class_stats(judge, x: torch.Tensor) -> dict:
    with torch.no_grad():
        c = judge(x.clamp(-1, 1)).argmax(-1).numpy()
    h = np.bincount(c, minlength=10) / len(c)
    nz = h[h > 0]
    return {"class_entropy": round(float(-(nz * np.log(nz)).sum()), 3), "min_class_share": round(float(h.min()), 3)}


def fd(fd_net, x: torch.Tensor, ref: torch.Tensor, n_boot: int) -> dict:
    e = metrics.frechet(fd_net, x.clamp(-1, 1), ref, n_boot=n_boot)
    return {"fd": round(e.value, 2), "fd_low": round(e.low, 2), "fd_high": round(e.high, 2)}


def generation(fs: dict, teacher, fd_net, judge, test, n: int, n_boot: int) -> list[dict]:
    z = edit.noises(SEED, n, (1, 16, 16))
    rows = []
    for steps in TEACHER_STEPS:
        t0 = time.perf_counter()
        x = torch.cat([edit.teacher_samples(teacher, zc, steps) for zc in z.split(250)])
        rows.append({"method": f"teacher DDIM-{steps}", "nfe": steps, **fd(fd_net, x, test, n_boot),
                     **class_stats(judge, x), "seconds": round(time.perf_counter() - t0, 2)})
        print(rows[-1], flush=True)
    for name, f in fs.items():
        t0 = time.perf_counter()
        outs = f.iterate(z, max(F_STEPS))
        secs = time.perf_counter() - t0
        for k in F_STEPS:
            rows.append({"method": f"{name} f^{k}", "nfe": k, **fd(fd_net, outs[k - 1], test, n_boot),
                         **class_stats(judge, outs[k - 1]), "seconds": round(secs * k / max(F_STEPS), 2)})
            print(rows[-1], flush=True)
    return rows


def idempotence(fs: dict, test: torch.Tensor, n: int) -> list[dict]:
    z = edit.noises(SEED, n, (1, 16, 16))
    rows = []
    for name, f in fs.items():
        with torch.no_grad():
            fz = f(z)
            rec = ((f(test) - test).flatten(1).norm(dim=1) / test.flatten(1).norm(dim=1)).mean()
        rows.append({"model": name, "idem_samples": round(float(edit.idempotence_error(f, fz).mean()), 4),
                     "idem_noise_first_step": round(float(edit.idempotence_error(f, z).mean()), 4),
                     "idem_test": round(float(edit.idempotence_error(f, test).mean()), 4),
                     "reconstruction_test": round(float(rec), 4)})
        print(rows[-1], flush=True)
    return rows


def editing(fs: dict, teacher, judge, test: torch.Tensor, labels: np.ndarray) -> list[dict]:
    rows = []

    def score(name, corr, evals, x, strength=None):
        with torch.no_grad():
            acc = metrics.bootstrap_mean(judge(x.clamp(-1, 1)).argmax(-1).numpy() == labels)
        rows.append({"corruption": corr, "method": name, "evals": evals, "sdedit_strength": strength,
                     "judge_accuracy": round(acc.value, 3), "acc_low": round(acc.low, 3), "acc_high": round(acc.high, 3),
                     "psnr": round(float(edit.psnr(x, test).mean()), 2)})
        print(rows[-1], flush=True)

    for corr, (kind, strength) in CORRUPTIONS.items():
        x_c = edit.corrupt(test, kind, strength, make_generator(SEED))
        score("corrupted input", corr, 0, x_c)
        for name, f in fs.items():
            outs = f.iterate(x_c, max(EDIT_K))
            for k in EDIT_K:
                score(f"{name} f^{k}", corr, k, outs[k - 1])
        for evals in SDEDIT_EVALS:
            for s in SDEDIT_STRENGTHS:
                score(f"SDEdit (teacher), strength {s}", corr, evals,
                      edit.sdedit(teacher, x_c, evals, s, make_generator(SEED + 1)), s)
    return rows


def stability(fd_net, judge, test, n: int, n_boot: int) -> list[dict]:
    z = edit.noises(SEED, n, (1, 16, 16))
    rows = []
    for method, name in (("sign", "sign-digits"), ("ign", "ign-digits")):
        budget = sign.SHORT[method]
        for seed in STABILITY_SEEDS:
            f = sign.load_run(name, seed=seed, warmup=budget["warmup"], joint=budget["joint"])
            with torch.no_grad():
                x = f(z)
            rows.append({"method": method.upper(), "seed": seed, "steps": budget["warmup"] + budget["joint"],
                         **fd(fd_net, x, test, n_boot), **class_stats(judge, x)})
            print(rows[-1], flush=True)
    return rows


def speed(fs: dict, teacher) -> dict:
    z = torch.randn(100, 1, 16, 16)
    out = {}
    null = torch.full((100,), 10)
    with torch.no_grad():
        for name, f in fs.items():
            f(z)
            t0 = time.perf_counter()
            for _ in range(5):
                f(z)
            out[f"{name} (one application of f)"] = round(1000 * (time.perf_counter() - t0) / 500, 3)
        teacher.model_fn(z, torch.full((100,), 500), {"class_labels": null})
        t0 = time.perf_counter()
        for _ in range(5):
            teacher.model_fn(z, torch.full((100,), 500), {"class_labels": null})
        out["teacher (one denoising step)"] = round(1000 * (time.perf_counter() - t0) / 500, 3)
    return out


def floor(fd_net, test, n: int, n_boot: int) -> dict:
    train = torch.from_numpy(digits.load("train").images)
    idx = torch.from_numpy(np.random.default_rng(0).choice(len(train), min(n, len(train)), replace=False))
    return fd(fd_net, train[idx], test, n_boot)


def fmt_fd(r):
    return f"{r['fd']:.1f} ({r['fd_low']:.1f}..{r['fd_high']:.1f})"


def write_md(report: dict, path: Path) -> None:
    L = ["# Edit (SIGN) benchmark\n",
         f"Machine: {report['machine']}. {report['n_gen']} samples per row (noise i from seed {SEED} + i, the same for "
         f"every method); FD-digits against the 360 test digits, 95% bootstrap interval; its floor ({report['n_gen']} "
         f"training digits vs the test digits): {fmt_fd(report['floor'])}. Class entropy: ln 10 = 2.303 is uniform.\n",
         "## Generation vs network evaluations\n", "| method | NFE | FD-digits | class entropy | smallest class share | seconds |",
         "|---|---|---|---|---|---|"]
    for r in report["generation"]:
        L.append(f"| {r['method']} | {r['nfe']} | {fmt_fd(r)} | {r['class_entropy']:.3f} | {r['min_class_share']:.3f} | "
                 f"{r['seconds']} |")
    L += ["", "## Idempotence (relative errors, mean over images)\n",
          "| model | on samples: f(f(x)) vs f(x), x = f(z) | first step from noise: f(f(z)) vs f(z) | on test digits: "
          "f(f(x)) vs f(x) | reconstruction on test digits: f(x) vs x |", "|---|---|---|---|---|"]
    for r in report["idempotence"]:
        L.append(f"| {r['model']} | {r['idem_samples']} | {r['idem_noise_first_step']} | {r['idem_test']} | "
                 f"{r['reconstruction_test']} |")
    L += ["", "## Editing corrupted test digits (360; judge accuracy on the true digit, PSNR to the clean digit)\n",
          "| corruption | method | evaluations | judge accuracy | PSNR (dB) |", "|---|---|---|---|---|"]
    for r in report["editing"]:
        L.append(f"| {r['corruption']} | {r['method']} | {r['evals']} | {r['judge_accuracy']:.3f} "
                 f"({r['acc_low']:.3f}..{r['acc_high']:.3f}) | {r['psnr']:.2f} |")
    L += ["", "## Stability across training seeds (short, equal budgets)\n",
          "| method | seed | steps | FD-digits of f^1 | class entropy |", "|---|---|---|---|---|"]
    for r in report["stability"]:
        L.append(f"| {r['method']} | {r['seed']} | {r['steps']} | {fmt_fd(r)} | {r['class_entropy']:.3f} |")
    L += ["", "## Speed (ms per image, batch 100)\n", "| what | ms |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in report["speed"].items()]
    L += ["", "## Goals\n"] + [f"- {g}" for g in report["goals"]]
    path.write_text("\n".join(L) + "\n")


def goals(report: dict) -> list[str]:
    gen = {r["method"]: r for r in report["generation"]}
    f1, d4, d50 = gen["sign-digits f^1"]["fd"], gen["teacher DDIM-4"]["fd"], gen["teacher DDIM-50"]["fd"]
    out = [f"f^1 FD-digits below teacher DDIM-4: {f1:.1f} vs {d4:.1f}: {'MET' if f1 < d4 else 'MISSED'}",
           f"f^1 FD-digits within 2x of teacher DDIM-50: {f1:.1f} vs 2 x {d50:.1f} = {2 * d50:.1f}: "
           f"{'MET' if f1 <= 2 * d50 else 'MISSED'}"]
    for corr in CORRUPTIONS:
        rows = [r for r in report["editing"] if r["corruption"] == corr]
        f1_acc = next(r for r in rows if r["method"] == "sign-digits f^1")["judge_accuracy"]
        for evals in (1, 4):
            best = max((r for r in rows if r["method"].startswith("SDEdit") and r["evals"] == evals),
                       key=lambda r: r["judge_accuracy"])
            out.append(f"editing ({corr}): f^1 judge accuracy {f1_acc:.3f} vs best SDEdit at {evals} evaluation(s) "
                       f"{best['judge_accuracy']:.3f} (strength {best['sdedit_strength']}): "
                       f"{'MET' if f1_acc > best['judge_accuracy'] else 'MISSED'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 samples, fewer bootstraps (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, n_boot = (200, 50) if args.quick else (N_GEN, 200)
    fd_net, judge, teacher = load_zoo("fd-digits"), load_zoo("judge-digits"), load_zoo("digits-cond")
    fs = {"sign-digits": load_zoo("sign-digits"), "ign-digits": load_zoo("ign-digits")}
    test_split = digits.load("test")
    test = torch.from_numpy(test_split.images)
    report = {"machine": machine_description(), "n_gen": n, "date": time.strftime("%Y-%m-%d"),
              "floor": floor(fd_net, test, n, n_boot)}
    report["generation"] = generation(fs, teacher, fd_net, judge, test, n, n_boot)
    report["idempotence"] = idempotence(fs, test, n)
    report["editing"] = editing(fs, teacher, judge, test, test_split.labels)
    report["stability"] = stability(fd_net, judge, test, n, n_boot)
    report["speed"] = speed(fs, teacher)
    report["goals"] = goals(report)
    suffix = "_quick" if args.quick else ""
    out = ROOT / "results"
    (out / f"sign{suffix}.json").write_text(json.dumps(report, indent=1))
    write_md(report, out / f"sign{suffix}.md")
    print("\n".join(report["goals"]))


if __name__ == "__main__":
    main()
