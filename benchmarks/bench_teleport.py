"""Teleport benchmark (issue 22): analytical teleportation (Wang & Vastola, TMLR 2024) on the zoo models.

Each model at its tab's sampler and guidance (``digits-cond``: DDIM 20, guidance 2; ``shapes-t2i``:
DPM-Solver++ 15, guidance 2), the first k steps replaced by the exact flow of its training data's
Gaussian model (``gaussian.safetensors`` beside the zoo entry), k = 0, 10, ..., 50 % of the steps.
Measured per k: the judge's accuracy (digits: the asked class; shapes: shape and colour, and
region), FD-digits / FD-shapes, network evaluations per image (two per step: classifier-free
guidance) and seconds, with 95 % bootstrap intervals.

* **Selection** (chooses k): digits, 20 per class from noise seed ``DIGITS_SELECT`` + i; shapes, the
  81 SELECTION prompts once from seed ``SHAPES_SELECT`` + i. The chosen k is the largest whose FD
  and accuracy values both lie inside the k = 0 intervals on the selection set.
* **Report** (never chooses): digits, 30 per class from seed 1000 + i (``studio eval``'s set);
  shapes, the 81 REPORT prompts twice from seed 2000 + i (``studio eval``'s set).

The paper's claim is that the first 15-30 % of the steps can be skipped at near-identical quality
(their CIFAR-10 FID 1.93 is context only). Goal (issue 22): at least 20 % fewer network
evaluations at FD within the interval of the full-step sampler.

Run: ``python benchmarks/bench_teleport.py --model digits`` and ``--model shapes`` (side by side,
resumable per k from ``runs/teleport-<model>.json``), then ``--report`` writes
``benchmarks/results/teleport.{json,md}``.

**Paired mode** (``--paired --model M``, then ``--paired --report``): every k from the same seeds,
the FD-net features kept (``runs/teleport-paired-*.npz``), so the change in FD that teleporting
causes gets a paired bootstrap interval (one resample of seeds for both sets), which the separate
intervals above cannot give. Two settings per model: ``conditional`` (guidance 2, as above) and
``unconditional`` (the null class / empty prompt alone, one evaluation a step: the paper's
setting, where the Gaussian is the unconditional data's). Same selection and report seeds; the
chosen k is the largest whose paired difference on the selection set is not above 0 (its interval
reaches 0 or below) and, when conditional, whose accuracy lies inside the k = 0 interval. Writes
``benchmarks/results/teleport_paired.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from studio import evaluate
from studio.core.manager import ModelManager
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DIGITS_SELECT, SHAPES_SELECT = 41000, 52000
SETTINGS = {"digits": {"model": "digits-cond", "sampler": ("ddim", 20), "guidance": 2.0},
            "shapes": {"model": "shapes-t2i", "sampler": ("dpm++", 15), "guidance": 2.0}}


def skips(steps: int) -> list[int]:
    return sorted({round(f * steps) for f in FRACTIONS})


def measure(manager: ModelManager, which: str, split: str, k: int, quick: bool) -> dict:
    s = SETTINGS[which]
    sched, steps = s["sampler"]
    t0 = time.perf_counter()
    if which == "digits":
        per_class = (3 if quick else 20) if split == "selection" else (5 if quick else 30)
        seed = DIGITS_SELECT if split == "selection" else 1000
        out = evaluate.evaluate_digits(manager, per_class=per_class, sweep=(s["guidance"],), steps=steps, seed=seed,
                                       scheduler=sched, teleport=k)
        row = out["sweep"][0]
        quality = {"accuracy": row["accuracy"], "fd": row["fd_digits"], "fd_floor": out["fd_digits_train_vs_test"],
                   "images": out["images_per_scale"]}
    else:
        prompts = evaluate.SELECTION_PROMPTS if split == "selection" else evaluate.REPORT_PROMPTS
        if quick:
            prompts = prompts[:12]
        out = evaluate.evaluate_shapes(manager, sweep=(s["guidance"],), repeats=1 if split == "selection" else 2,
                                       steps=steps, seed=SHAPES_SELECT if split == "selection" else 2000,
                                       scheduler=sched, prompts=prompts, teleport=k)
        row = out["sweep"][0]
        quality = {"accuracy": row["shape_and_colour"], "region": row["region"], "fd": row["fd_shapes"],
                   "fd_floor": out["fd_shapes_real_vs_real"], "images": out["images_per_scale"]}
    return {"k": k, "steps": steps, "evals_per_image": 2 * (steps - k),
            "seconds_per_image_1_thread": round((time.perf_counter() - t0) / quality["images"], 3), **quality}


def inside(value: float, interval: dict) -> bool:
    return interval["low"] <= value <= interval["high"]


def choose(selection: list[dict]) -> int:
    """The largest k whose selection FD and accuracy values lie inside the k = 0 intervals."""
    base = next(r for r in selection if r["k"] == 0)
    ok = [r["k"] for r in selection if inside(r["fd"]["value"], base["fd"]) and inside(r["accuracy"]["value"], base["accuracy"])]
    return max(ok)


def run_model(which: str, quick: bool) -> dict:
    torch.set_num_threads(1)
    path = RUNS_DIR / f"teleport-{which}{'-quick' if quick else ''}.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    steps = SETTINGS[which]["sampler"][1]
    for split in ("selection", "report"):
        for k in skips(steps):
            key = f"{split} {k}"
            if key not in done:
                done[key] = measure(manager, which, split, k, quick)
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps(done, indent=1) + "\n")
                r = done[key]
                print(which, key, f"accuracy {r['accuracy']['value']:.3f}, FD {r['fd']['value']:.1f}", flush=True)
    return done


def summarise(which: str, done: dict) -> dict:
    selection = [v for k, v in done.items() if k.startswith("selection")]
    report = [v for k, v in done.items() if k.startswith("report")]
    chosen = choose(selection)
    base = next(r for r in report if r["k"] == 0)
    pick = next(r for r in report if r["k"] == chosen)
    saving = 1 - pick["evals_per_image"] / base["evals_per_image"]
    return {**SETTINGS[which], "sampler": "{} {}".format(*SETTINGS[which]["sampler"]), "selection": selection,
            "report": report, "chosen_k": chosen, "evaluations_saved": round(saving, 3),
            "fd_inside_full_interval": inside(pick["fd"]["value"], base["fd"]),
            "goal_met": bool(saving >= 0.2 and inside(pick["fd"]["value"], base["fd"]))}


def fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def fdf(e: dict) -> str:
    return f"{e['value']:.1f} [{e['low']:.1f}, {e['high']:.1f}]"


def markdown(r: dict) -> str:
    lines = [f"# Teleport benchmark: analytical teleportation on the zoo models ({r['machine']}, {r['date']})", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "Selection and report sets as in `bench_teleport.py`'s docstring. Toy scale: the paper's CIFAR-10 FID "
             "1.93 is context, not comparable.", ""]
    for which, m in r["models"].items():
        lines += [f"## `{m['model']}`, {m['sampler']}, guidance {m['guidance']}", ""]
        for split in ("selection", "report"):
            extra = " | region" if which == "shapes" else ""
            lines += [f"**{split.capitalize()}**", "", f"| k skipped | evaluations / image | accuracy{extra} | FD | s / image |",
                      "|---|---|---|---|---|" + ("---|" if extra else "")]
            for row in m[split]:
                reg = f" | {fmt(row['region'])}" if which == "shapes" else ""
                lines.append(f"| {row['k']} of {row['steps']} | {row['evals_per_image']} | {fmt(row['accuracy'])}{reg} | "
                             f"{fdf(row['fd'])} | {row['seconds_per_image_1_thread']} |")
            lines.append("")
        lines += [f"FD floor (real vs real at this size): {fdf(m['report'][0]['fd_floor'])}.", "",
                  f"Chosen on selection: **k = {m['chosen_k']}** ({m['evaluations_saved']:.0%} fewer evaluations); on "
                  f"the report set its FD is {'inside' if m['fd_inside_full_interval'] else 'outside'} the full "
                  f"sampler's interval. Goal (>= 20 % fewer evaluations at FD inside that interval): "
                  f"**{'met' if m['goal_met'] else 'not met'}**.", ""]
    return "\n".join(lines)


# --- paired mode ----------------------------------------------------------------------------------------

PAIRED_SETTINGS = ("conditional", "unconditional")


def paired_images(manager: ModelManager, which: str, setting: str, split: str, k: int, quick: bool,
                  regrid: bool = False):
    """(images, what the judge should read or None) for one k, from the split's seeds."""
    s = SETTINGS[which]
    sched, steps = s["sampler"]
    guidance = s["guidance"] if setting == "conditional" else 1.0  # unconditional: the null branch alone
    if which == "digits":
        per_class = (3 if quick else 20) if split == "selection" else (5 if quick else 30)
        seed = DIGITS_SELECT if split == "selection" else 1000
        labels = torch.arange(10).repeat_interleave(per_class)
        null = torch.full_like(labels, 10)
        cond = labels if setting == "conditional" else null
        with manager.use("digits-cond") as dm:
            x = torch.cat([evaluate.sample_batch(dm, {"class_labels": cond[i:i + 100]}, {"class_labels": null[i:i + 100]},
                                                 guidance, len(labels[i:i + 100]), seed + i, steps, sched, k, regrid)
                           for i in range(0, len(labels), 100)])
        return x, labels if setting == "conditional" else None
    prompts = evaluate.SELECTION_PROMPTS if split == "selection" else evaluate.REPORT_PROMPTS
    prompts = (prompts[:12] if quick else prompts) * (1 if split == "selection" else 2)
    seed = SHAPES_SELECT if split == "selection" else 2000
    with manager.use("text-encoder") as enc:
        cond, uncond = evaluate.prompt_conditions([c["prompt"] for c in prompts], enc)
    if setting == "unconditional":
        cond = uncond
    parts = []
    with manager.use("shapes-t2i") as dm:
        for i in range(0, len(prompts), 64):
            sl = slice(i, min(i + 64, len(prompts)))
            parts.append(evaluate.sample_batch(dm, {a: v[sl] for a, v in cond.items()}, {a: v[sl] for a, v in uncond.items()},
                                               guidance, sl.stop - sl.start, seed + i, steps, sched, k, regrid))
    return torch.cat(parts), prompts if setting == "conditional" else None


def paired_model(which: str, quick: bool) -> None:
    """Generate and keep features for every (setting, split, k); resumable per k."""
    import numpy as np

    from studio.core import metrics

    torch.set_num_threads(1)
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    steps = SETTINGS[which]["sampler"][1]
    fdnet, judge = ("fd-digits", "judge-digits") if which == "digits" else ("fd-shapes", "judge-shapes")
    for setting in PAIRED_SETTINGS:
        for split in ("selection", "report"):
            path = RUNS_DIR / f"teleport-paired-{which}-{setting}-{split}{'-quick' if quick else ''}.npz"
            done = dict(np.load(path)) if path.exists() else {}
            for k in skips(steps):
                if f"features_{k}" in done:
                    continue
                t0 = time.perf_counter()
                x, truth = paired_images(manager, which, setting, split, k, quick)
                with manager.use(fdnet) as net:
                    done[f"features_{k}"] = metrics.features(net, x)
                if truth is not None:
                    with manager.use(judge) as j:
                        if which == "digits":
                            pred, _ = metrics.judge_reading(j, x)
                            done[f"hits_{k}"] = (pred == truth.numpy()).astype(float)
                        else:
                            done[f"hits_{k}"] = metrics.shapes_concept_hits(j, x, truth)["shape_colour"].astype(float)
                done[f"seconds_{k}"] = np.array((time.perf_counter() - t0) / len(x))
                path.parent.mkdir(exist_ok=True)
                np.savez(path, **done)
                print(which, setting, split, k, f"{done[f'seconds_{k}']:.3f} s/image", flush=True)


def paired_summary(which: str, quick: bool) -> dict:
    import numpy as np

    from studio.core import metrics
    from studio.data import digits, shapes

    if which == "digits":
        real = torch.from_numpy(digits.load("test").images)
    else:
        real = shapes.to_model_range(shapes.make_dataset(1000, seed=424242)[0])
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    with manager.use("fd-digits" if which == "digits" else "fd-shapes") as net:
        real_f = metrics.features(net, real)
    s = SETTINGS[which]
    steps = s["sampler"][1]
    out = {"model": s["model"], "sampler": "{} {}".format(*s["sampler"]), "settings": {}}
    for setting in PAIRED_SETTINGS:
        per_split = {}
        for split in ("selection", "report"):
            d = dict(np.load(RUNS_DIR / f"teleport-paired-{which}-{setting}-{split}{'-quick' if quick else ''}.npz"))
            rows = []
            for k in skips(steps):
                f = d[f"features_{k}"]
                row = {"k": k, "evals_per_image": (2 if setting == "conditional" else 1) * (steps - k),
                       "seconds_per_image_1_thread": round(float(d[f"seconds_{k}"]), 3), "images": len(f),
                       "fd": metrics.frechet_features(f, real_f).to_dict(),
                       "fd_change": metrics.frechet_paired_difference(real_f, d["features_0"], f).to_dict()}
                if f"hits_{k}" in d:
                    row["accuracy"] = metrics.bootstrap_mean(d[f"hits_{k}"]).to_dict()
                rows.append(row)
            per_split[split] = rows
        ok = [r["k"] for r in per_split["selection"] if r["fd_change"]["low"] <= 0
              and ("accuracy" not in r or inside(r["accuracy"]["value"], per_split["selection"][0]["accuracy"]))]
        chosen = max(ok)
        pick = next(r for r in per_split["report"] if r["k"] == chosen)
        base = per_split["report"][0]
        out["settings"][setting] = {**per_split, "chosen_k": chosen,
                                    "evaluations_saved": round(1 - pick["evals_per_image"] / base["evals_per_image"], 3),
                                    "report_fd_change": pick["fd_change"],
                                    "fd_inside_full_interval": inside(pick["fd"]["value"], base["fd"])}
    return out


def regrid_comparison(which: str = "shapes") -> dict:
    """The official continuation (a fresh grid of N - k steps from the skip level) against the tail of the
    N-step grid, on the report set, per k: FD change of the fresh grid vs the tail (paired, same seeds), and
    each vs k = 0. Needs the paired runs' features (``runs/teleport-paired-*``). DPM-Solver++ takes a custom
    grid; DDIM (digits) does not, so only shapes is measured."""
    import numpy as np

    from studio.core import metrics
    from studio.data import shapes

    torch.set_num_threads(1)
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    real = shapes.to_model_range(shapes.make_dataset(1000, seed=424242)[0])
    with manager.use("fd-shapes") as net:
        real_f = metrics.features(net, real)
    steps = SETTINGS[which]["sampler"][1]
    out = {}
    for setting in PAIRED_SETTINGS:
        tail = dict(np.load(RUNS_DIR / f"teleport-paired-{which}-{setting}-report.npz"))
        rows = []
        for k in skips(steps)[1:]:
            x, _ = paired_images(manager, which, setting, "report", k, False, regrid=True)
            with manager.use("fd-shapes") as net:
                f = metrics.features(net, x)
            rows.append({"k": k, "fd_fresh": metrics.frechet_features(f, real_f).to_dict(),
                         "fresh_vs_full": metrics.frechet_paired_difference(real_f, tail["features_0"], f).to_dict(),
                         "tail_vs_full": metrics.frechet_paired_difference(real_f, tail["features_0"], tail[f"features_{k}"]).to_dict(),
                         "fresh_vs_tail": metrics.frechet_paired_difference(real_f, tail[f"features_{k}"], f).to_dict()})
            print(setting, rows[-1], flush=True)
        out[setting] = rows
    return out


def regrid_markdown(r: dict) -> str:
    lines = ["", f"## The official continuation: a fresh grid after teleporting ({r['date']})", "",
             "`shapes-t2i` DPM-Solver++ 15 on the report set (the 81 REPORT prompts twice, seeds 2000 + i): after "
             "teleporting k steps, the official code samples a fresh grid of 15 - k steps from the skip level; the "
             "studio's default continues on the tail of the 15-step grid. Same seeds, same network evaluations; "
             "paired FD changes (no k is chosen here). Command: `python benchmarks/bench_teleport.py --regrid`.", ""]
    for setting, rows in r["regrid"].items():
        lines += [f"**{setting}**", "", "| k | FD, fresh grid | change vs full: tail | change vs full: fresh | fresh - tail |",
                  "|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['k']} | {fdf(row['fd_fresh'])} | {fdf(row['tail_vs_full'])} | {fdf(row['fresh_vs_full'])} | "
                         f"{fdf(row['fresh_vs_tail'])} |")
        lines.append("")
    return "\n".join(lines)


def paired_markdown(r: dict) -> str:
    lines = [f"# Teleport benchmark, paired: the FD change teleporting causes ({r['machine']}, {r['date']})", "",
             "Command: `python benchmarks/bench_teleport.py --paired --model digits` and `--model shapes`, then "
             "`--paired --report`. Every k from the same seeds; `FD change` is FD(k) - FD(0) with a paired "
             "bootstrap 95 % interval (one resample of the seeds for both sets); an interval covering 0 is no "
             "difference. k chosen on the **selection** set (digits: 20 per class, seeds 41000 + i; shapes: the "
             "81 SELECTION prompts, seeds 52000 + i), reported on the **report** set (digits: 30 per class, seeds "
             "1000 + i; shapes: the 81 REPORT prompts twice, seeds 2000 + i). *Unconditional* is the paper's "
             "setting (the null class / empty prompt alone). Toy scale: the paper's CIFAR-10 FID 1.93 is "
             "context only.", ""]
    for m in r["models"].values():
        for setting, v in m["settings"].items():
            lines += [f"## `{m['model']}` {m['sampler']}, {setting}", ""]
            for split in ("selection", "report"):
                acc = " | judge accuracy" if "accuracy" in v[split][0] else ""
                lines += [f"**{split.capitalize()}** ({v[split][0]['images']} images)", "",
                          f"| k skipped | evaluations / image | FD | FD change vs k = 0{acc} | s / image |",
                          "|---|---|---|---|---|" + ("---|" if acc else "")]
                for row in v[split]:
                    a = f" | {fmt(row['accuracy'])}" if acc else ""
                    lines.append(f"| {row['k']} | {row['evals_per_image']} | {fdf(row['fd'])} | {fmt(row['fd_change'])}{a} | "
                                 f"{row['seconds_per_image_1_thread']} |")
                lines.append("")
            c = v["report_fd_change"]
            verdict = "no difference" if c["low"] <= 0 <= c["high"] else ("worse" if c["low"] > 0 else "better")
            lines += [f"Chosen on selection: **k = {v['chosen_k']}** ({v['evaluations_saved']:.0%} fewer evaluations). "
                      f"On the report set its FD change is {fmt(c)}: **{verdict}**; its FD is "
                      f"{'inside' if v['fd_inside_full_interval'] else 'outside'} the full sampler's interval.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(SETTINGS), help="measure one model (resumable)")
    ap.add_argument("--report", action="store_true", help="write benchmarks/results/teleport.{json,md}")
    ap.add_argument("--quick", action="store_true", help="a few images, nothing written to results")
    ap.add_argument("--paired", action="store_true", help="the paired mode (see the docstring)")
    ap.add_argument("--regrid", action="store_true", help="fresh grid vs tail after teleporting (shapes, report set)")
    args = ap.parse_args()
    if args.regrid:
        path = ROOT / "results" / "teleport_paired.json"
        out = json.loads(path.read_text())
        out["regrid"] = regrid_comparison()
        out["date_regrid"] = time.strftime("%Y-%m-%d")
        path.write_text(json.dumps(out, indent=2) + "\n")
        text = paired_markdown(out) + regrid_markdown({"date": out["date_regrid"], "regrid": out["regrid"]})
        (ROOT / "results" / "teleport_paired.md").write_text(text)
        print(text)
        raise SystemExit(0)
    if args.paired:
        models = [args.model] if args.model else list(SETTINGS)
        if not args.report:
            for w in models:
                paired_model(w, args.quick)
        out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
               "models": {w: paired_summary(w, args.quick) for w in models}}
        text = paired_markdown(out)
        if args.report and not args.quick:
            old = ROOT / "results" / "teleport_paired.json"
            if old.exists() and "regrid" in json.loads(old.read_text()):
                previous = json.loads(old.read_text())
                out["regrid"], out["date_regrid"] = previous["regrid"], previous["date_regrid"]
                text += regrid_markdown({"date": out["date_regrid"], "regrid": out["regrid"]})
            (ROOT / "results" / "teleport_paired.json").write_text(json.dumps(out, indent=2) + "\n")
            (ROOT / "results" / "teleport_paired.md").write_text(text)
        print(text)
        raise SystemExit(0)
    models = [args.model] if args.model else list(SETTINGS)
    results = {w: summarise(w, run_model(w, args.quick)) for w in models}
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "models": results}
    text = markdown(out)
    if args.report and not args.quick:
        (ROOT / "results").mkdir(exist_ok=True)
        (ROOT / "results" / "teleport.json").write_text(json.dumps(out, indent=2) + "\n")
        (ROOT / "results" / "teleport.md").write_text(text)
    print(text)
