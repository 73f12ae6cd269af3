"""Architectures benchmark: DiffusionNAG on the NAS-Bench-201 space trained on digits.

Models: ``nag-digits`` (score network; its predictor is the tab's) and, for the search, *transfer*
predictors trained here on every task but the one searched (leave-one-task-out, as DiffusionNAG's
meta-predictor never saw the target dataset; cached under ``runs/nag-bench/``). Ground truth: the
shipped table (:func:`studio.data.nasbench.table`): every class trained with two seeds, their mean.

Sampling uses the tab's 200 steps unless stated.

* **Validity / uniqueness / novelty** of 1,000 generated cells (task "all ten"), unguided and
  guided, exactly as the official code defines them (novelty against the score network's
  training half).
* **Search efficiency**, per task, ``SEEDS`` seeds each: best validation accuracy vs cells
  trained for
  - DiffusionNAG: ``POOL`` cells generated with guidance, trained in predicted order;
  - unguided: ``POOL`` cells from the same score network without guidance, same order;
  - predictor-filtered random: ``POOL`` uniformly random cells, same predictor, same order;
  - random search: cells in uniformly random order.
  Reported: the median number of cells trained before one reaches the top 1% of the space
  (runs that never do count as more than the pool), and the median best accuracy after 5, 10
  and 25. Goal: at least 10x fewer than random search, and fewer than predictor-filtered random.
* **Guidance-scale sweep**: mean validation accuracy (and validity) of generated cells vs w.
* **Speed**: seconds to generate 100 cells on this machine's CPU at the tab's 200 steps and at
  1,000 (the official N), unguided and guided.
* **How much there is to find**: the ground truth's own noise (rank correlation between its two
  training seeds, and the share of one seed's top 1% that is in the other's) beside the transfer
  predictor's rank correlation with the truth on the task it never saw.

"The space" is all 15,625 cells; random search and the predictor-filtered pool draw from it, and
its top 1% (:func:`studio.data.nasbench.top_fraction`) is the target.

The space's accuracies are the ground truth's; the paper's figures (NAS-Bench-201 on CIFAR and
other image sets, ResNet-18 task features) are context only, not comparable.

Writes ``benchmarks/results/nag.json``, ``nag.md`` and ``nag_search.html`` (the curves):
``python benchmarks/bench_nag.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core.loading import load_module_folder, load_zoo
from studio.core.nas_metrics import best_so_far, random_search_curves, trained_to_reach, vun
from studio.core.sampling import run_to_end
from studio.data import nasbench
from studio.data.nasbench import TASKS, space_values, top_fraction
from studio.methods import nag
from studio.train import nag as train_nag
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
CACHE = RUNS_DIR / "nag-bench"
SEEDS = 10
POOL = 500  # cells generated (or drawn) per run, then trained in predicted order: the official num-gen-arch
SCALES = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
PAPER = {"validity": 0.9897, "uniqueness": 0.9870, "novelty": 0.4920}  # [3P] table, NB201, 1k cells


def seed_agreement(path: Path | None = None) -> dict[str, dict]:
    """Per task, how well the ground truth's two training seeds agree: Spearman's rank correlation
    of their validation accuracies, and the share of seed 0's top-1% classes in seed 1's top 1%."""
    from scipy.stats import spearmanr

    acc: dict[tuple[str, int], dict[str, float]] = {}
    for row in nasbench.read_rows(path):
        acc.setdefault((row["task"], int(row["seed"])), {})[row["arch"]] = float(row["val_acc"])
    out = {}
    for task in TASKS:
        a, b = acc.get((task, 0), {}), acc.get((task, 1), {})
        both = sorted(set(a) & set(b))
        if not both:
            continue
        x, y = ({k: d[k] for k in both} for d in (a, b))
        top_x, top_y = ({k for k, v in d.items() if v >= t} for d, t in ((x, top_fraction(x)), (y, top_fraction(y))))
        out[task] = {"classes": len(both), "spearman": float(spearmanr([x[k] for k in both], [y[k] for k in both])[0]),
                     "top1_kept": len(top_x & top_y) / max(len(top_x), 1)}
    return out


def transfer_predictor(task: str, quick: bool):
    """The predictor trained on every task but ``task`` (cached)."""
    folder = CACHE / f"predictor-without-{task.replace('/', '-').replace(' ', '-')}"
    if (folder / "config.json").exists() and not quick:
        return load_module_folder(folder, "AccuracyPredictor")
    others = tuple(t for t in TASKS if t != task)
    net, _ = train_nag.train_predictor(others, steps=200 if quick else train_nag.RECIPE["predictor_steps"],
                                       progress=False)
    if not quick:
        net.save_pretrained(folder, safe_serialization=True)
    return net


def ordered_by_prediction(cells: list[str], predictor, code) -> list[str]:
    distinct = sorted(set(cells))
    pred = nag.predict(predictor, distinct, code)
    return [distinct[i] for i in np.argsort(-pred, kind="stable")]


def search(task: str, score, predictor, values: dict[str, float], scale: float, seeds: int, steps: int) -> dict:
    from scipy.stats import spearmanr

    target = top_fraction(values)
    code = nag.task_code(predictor, task)
    curves: dict[str, list[np.ndarray]] = {"DiffusionNAG (guided)": [], "unguided": [],
                                           "predictor-filtered random": [], "random search": []}
    space_cells = sorted(values)
    for seed in range(seeds):
        for name, w in (("DiffusionNAG (guided)", scale), ("unguided", 0.0)):
            cells = run_to_end(nag.sample_cells(score, predictor, code, w, POOL, seed, steps))
            cells = [a for a in cells if a is not None]
            order = ordered_by_prediction(cells, predictor, code)
            curve = best_so_far(order, values)
            curves[name].append(curve if len(curve) else np.zeros(1))  # no valid cell: nothing found
        rng = np.random.default_rng(seed)
        pool = [space_cells[i] for i in rng.choice(len(space_cells), POOL, replace=False)]
        curves["predictor-filtered random"].append(best_so_far(ordered_by_prediction(pool, predictor, code), values))
    rand = random_search_curves(values, 1000, len(values), seed=1)
    curves["random search"] = list(rand)
    pred = nag.predict(predictor, space_cells, code)
    out = {"task": task, "space_cells": len(values), "top1_threshold": target, "methods": {},
           "predictor_spearman": float(spearmanr(pred, [values[a] for a in space_cells])[0])}
    for name, runs in curves.items():
        reach = [trained_to_reach(c, target) for c in runs]
        out["methods"][name] = {
            "runs": len(runs), "median_trained_to_top1": float(np.median(reach)),
            "trained_to_top1_per_run": [float(v) for v in reach] if name != "random search" else None,
            "reached_top1": float(np.mean(np.isfinite(reach))),
            **{f"best_after_{k}": float(np.median([c[min(k, len(c)) - 1] for c in runs])) for k in (5, 10, 25, 100)},
            "curve_median": [float(np.median([c[min(k, len(c)) - 1] for c in runs])) for k in range(1, POOL + 1)],
        }
    return out


def sweep(score, predictor, values: dict[str, float], task: str, n: int, steps: int) -> list[dict]:
    """Validity, mean true accuracy and top-1% share of generated cells vs scale."""
    target = top_fraction(values)
    code = nag.task_code(predictor, task)
    rows = []
    for w in SCALES:
        cells = run_to_end(nag.sample_cells(score, predictor, code, w, n, 77, steps))
        valid = [a for a in cells if a is not None]
        acc = np.array([values[a] for a in valid])
        rows.append({"scale": w, "validity": len(valid) / n, "distinct": len(set(valid)),
                     "mean_val_acc": float(acc.mean()) if len(acc) else None,
                     "top1_share": float((acc >= target).mean()) if len(acc) else None})
    return rows


def timing(score, predictor, steps: int) -> dict:
    torch.set_num_threads(2)
    code = nag.task_code(predictor, "all ten")
    out = {}
    for name, w in (("unguided", 0.0), ("guided", nag.DEFAULT_SCALE)):
        runs = []
        for _ in range(2 if steps <= nag.DEFAULT_STEPS else 1):  # the best of two where it is cheap
            t0 = time.perf_counter()
            run_to_end(nag.sample_cells(score, predictor, code, w, 100, 0, steps))
            runs.append(time.perf_counter() - t0)
        out[name] = min(runs)
    return out


def main(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    table = nasbench.table()
    zoo = load_zoo("nag-digits")
    score = zoo.score
    steps = 50 if quick else nag.DEFAULT_STEPS
    split = set(nasbench.score_split(zoo.info.get("score_split_seed", 0)))
    results: dict = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "steps": steps,
                     "pool": POOL, "seeds": 2 if quick else SEEDS, "default_scale": nag.DEFAULT_SCALE}
    results["timing_100_cells_s"] = {n: timing(score, zoo.predictor, n) for n in ((50,) if quick else
                                                                                  (nag.DEFAULT_STEPS, nag.N_STEPS))}
    n_vun = 100 if quick else 1000
    results["vun"] = {}
    code = nag.task_code(zoo.predictor, "all ten")
    for name, w in (("unguided", 0.0), ("guided", nag.DEFAULT_SCALE)):
        cells = run_to_end(nag.sample_cells(score, zoo.predictor, code, w, n_vun, 1000, steps))
        results["vun"][name] = vun(cells, split)
    results["seed_agreement"] = seed_agreement()
    results["search"], results["sweep"] = [], {}
    for task in tuple(TASKS)[:1] if quick else TASKS:
        values = space_values(task, table)
        predictor = transfer_predictor(task, quick)
        results["search"].append(search(task, score, predictor, values, nag.DEFAULT_SCALE, results["seeds"], steps))
        results["sweep"][task] = sweep(score, predictor, values, task, 50 if quick else 200, steps)
        print(task, json.dumps(results["search"][-1]["methods"]["DiffusionNAG (guided)"]["median_trained_to_top1"]),
              flush=True)
    return results


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']}, {r['date']}. Sampler: {r['steps']} steps (corrector + predictor each); "
             f"guidance scale {r['default_scale']}; pool of {r['pool']} cells; {r['seeds']} seeds per task. "
             "Accuracies are this studio's digits ground truth, **not** NAS-Bench-201's CIFAR figures.", "",
             "Validity / uniqueness / novelty (task all ten, novelty against the score network's training half):", "",
             "| sampling | validity | uniqueness | novelty |", "|---|---|---|---|"]
    for name, v in r["vun"].items():
        lines.append(f"| {name} | {v['validity']:.3f} | {v['uniqueness']:.3f} | {v['novelty']:.3f} |")
    lines.append(f"| paper (NB201, [3P] table; context only) | {PAPER['validity']:.4f} | {PAPER['uniqueness']:.4f} "
                 f"| {PAPER['novelty']:.4f} |")
    lines += ["", "Search efficiency (median over runs; cells trained before one reaches the space's top 1%; "
              "'> pool' where the median run never does):", ""]
    lines += ["| task | method | trained to reach top 1% (median) | runs reaching it | best after 5 | after 10 "
              "| after 25 | after 100 |", "|---|---|---|---|---|---|---|---|"]
    for s in r["search"]:
        for name, m in s["methods"].items():
            k = m["median_trained_to_top1"]
            k_txt = f"> {r['pool']}" if not np.isfinite(k) else f"{k:g}"
            lines.append(f"| {s['task']} | {name} | {k_txt} | {m['reached_top1']:.0%} | {m['best_after_5']:.4f} | "
                         f"{m['best_after_10']:.4f} | {m['best_after_25']:.4f} | {m['best_after_100']:.4f} |")
    lines += ["", "How much there is to find: the ground truth's two seeds against each other, and the transfer "
              "predictor against the truth (mean of the seeds) on the task it never saw (Spearman over the space):", "",
              "| task | seeds' Spearman | seed 0's top 1% in seed 1's | transfer predictor's Spearman |",
              "|---|---|---|---|"]
    pred_rho = {s["task"]: s["predictor_spearman"] for s in r["search"]}
    for task, a in r["seed_agreement"].items():
        rho = f"{pred_rho[task]:.3f}" if task in pred_rho else "-"
        lines.append(f"| {task} | {a['spearman']:.3f} | {a['top1_kept']:.0%} | {rho} |")
    lines += ["", "Guidance-scale sweep (200 cells, seed 77, transfer predictor):", "",
              "| task | scale | validity | distinct valid cells | mean validation accuracy | share in the top 1% |",
              "|---|---|---|---|---|---|"]
    for task, rows in r["sweep"].items():
        for row in rows:
            acc = "-" if row["mean_val_acc"] is None else f"{row['mean_val_acc']:.4f}"
            top = "-" if row["top1_share"] is None else f"{row['top1_share']:.3f}"
            lines.append(f"| {task} | {row['scale']:g} | {row['validity']:.3f} | {row['distinct']} | {acc} | {top} |")
    lines += ["", "Seconds to generate 100 cells (2 threads; goal: under 10):", "",
              "| sampler steps | unguided | guided |", "|---|---|---|"]
    for n, t in r["timing_100_cells_s"].items():
        lines.append(f"| {n} | {t['unguided']:.1f} | {t['guided']:.1f} |")
    return "\n".join(lines) + "\n"


def _log_points(n: int, count: int = 80) -> np.ndarray:
    """Indices 0..n-1 spaced evenly on a log axis (the charts' x), so the file stays small."""
    return np.unique(np.round(np.logspace(0, np.log10(n), count)).astype(int) - 1)


def plot(r: dict, table: dict, path: Path) -> None:
    """The search-efficiency curves, one chart per task: each pool method's median best-so-far over
    its seeds, and random search's median and interquartile band (1,000 runs) out to 1,000 cells."""
    from studio.plots import efficiency_chart

    parts = []
    for s in r["search"]:
        values = space_values(s["task"], table)
        curves = {}
        for name, m in s["methods"].items():
            if name != "random search":
                k = _log_points(len(m["curve_median"]))
                curves[name] = (k + 1, np.array(m["curve_median"])[k])
        k = _log_points(1000)
        rand = random_search_curves(values, 1000, 1000, seed=1)[:, k]
        curves["random search"] = (k + 1, *np.percentile(rand, [50, 25, 75], axis=0))
        fig = efficiency_chart(curves, s["top1_threshold"], f"{s['task']}: best true accuracy vs cells trained "
                               f"(median of {r['seeds']} seeds; random search: median and IQR)", height=380)
        parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn" if not parts else False))
    path.write_text("<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    res = main(args.quick)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stem = "nag-quick" if args.quick else "nag"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=float))
    (out / f"{stem}.md").write_text(markdown(res))
    plot(res, nasbench.table(), out / f"{stem}_search.html")
    print(markdown(res))
