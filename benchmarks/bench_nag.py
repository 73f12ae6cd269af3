"""Architectures benchmark: DiffusionNAG on the NAS-Bench-201 space trained on digits.

Models: ``nag-digits``'s score network, and for the search *transfer* predictors trained here on
every task but the one searched (leave-one-task-out, as DiffusionNAG's meta-predictor never saw the
target dataset; cached under ``runs/nag-bench/``). The predictor is the studio's CATE-style
transformer reader, **not** the official directed-GCN meta-predictor (see :mod:`studio.nets.nag`).
Ground truth: the shipped table (:func:`studio.data.nasbench.table`): every class trained with two
seeds, their mean; validation accuracy (360 digits split off the training digits) is what every
search ranks and selects by, test accuracy (the 360 test digits) is only read for the cell a search
picks.

* **Guidance scale, chosen per task on selection seeds** (``SELECTION_SEEDS``): for each scale of
  ``CHOICES`` a search is run per selection seed; the scale with the fewest cells trained to reach
  the top 1% (median over the selection seeds; ties: the higher mean best validation accuracy after
  25 cells) is the task's scale. Validity, distinct cells and mean true accuracy of the generated
  cells per scale come from the same runs (the old seed-77 sweep is gone).
* **Search efficiency, reported on other seeds** (``REPORT_SEEDS``), per task: best validation
  accuracy vs cells trained for
  - DiffusionNAG: ``POOL`` cells generated with the task's chosen scale, trained in predicted order;
  - unguided: ``POOL`` cells from the same score network without guidance, same order;
  - predictor-filtered random: ``POOL`` uniformly random cells, same predictor, same order;
  - random search: cells in uniformly random order (1,000 runs).
  Reported, each with a 95% bootstrap interval over runs: the median number of cells trained before
  one reaches the space's top 1% (runs that never do count as more than the pool), how many times
  fewer than random search (ratio of medians), and after 10, 25 and 100 cells trained the picked
  cell (best validation so far): its validation **and test** accuracy (means over runs).
* **How much there is to find**: the ground truth's own noise (rank correlation between its two
  training seeds, and the share of one seed's top 1% that is in the other's) beside the transfer
  predictor's rank correlation with the truth on the task it never saw.
* **Validity / uniqueness / novelty** of 1,000 generated cells and **speed** (seconds for 100 cells):
  not re-run by default (they do not depend on the per-task scale); carried over from the previous
  results file with its date. ``--extras`` re-runs them (the shipped predictor, scale 50, 200 steps).

Compute (issue 19's budget, about 40 single-core minutes for everything): the sampler runs
``STEPS`` = 100 steps (the tab: 200; the official N: 1,000), the pool is ``POOL`` = 200 cells (the
official ``num-gen-arch``: 500), the transfer predictors train ``PREDICTOR_STEPS`` = 750 steps (the
zoo recipe: 3,000), 2 selection and 5 report seeds. The results file says so.

"The space" is all 15,625 cells; random search and the predictor-filtered pool draw from it, and
its top 1% (:func:`studio.data.nasbench.top_fraction`) is the target. The space's accuracies are the
ground truth's; the paper's figures (NAS-Bench-201 on CIFAR and other image sets, ResNet-18 task
features) are context only, not comparable.

Writes ``benchmarks/results/nag.json``, ``nag.md`` and ``nag_search.html`` (the curves):
``python benchmarks/bench_nag.py [--quick] [--extras]``; finished tasks are kept in
``runs/nag-bench/partial*.json`` so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core.loading import load_module_folder, load_zoo
from studio.core.metrics import bootstrap_mean
from studio.core.nas_metrics import (best_so_far, bootstrap_median, bootstrap_ratio, chosen_so_far, random_orders,
                                     random_search_curves, trained_to_reach, vun)
from studio.core.sampling import run_to_end
from studio.data import nasbench
from studio.data.nasbench import TASKS, space_values, top_fraction
from studio.methods import nag
from studio.train import nag as train_nag
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
CACHE = RUNS_DIR / "nag-bench"
STEPS = 100            # sampler steps in the benchmark (the tab: 200; the official N: 1,000); budget
POOL = 200             # cells generated (or drawn) per run, trained in predicted order (official num-gen-arch: 500)
PREDICTOR_STEPS = 750  # the transfer predictors' steps (the zoo recipe: 3,000, 10 single-core minutes each)
SELECTION_SEEDS = (0, 1)               # the guidance scale is chosen on these ...
REPORT_SEEDS = (100, 101, 102, 103, 104)  # ... and reported on these
CHOICES = (10.0, 30.0, 100.0, 300.0)   # the scales a task's scale is chosen from
BUDGETS = (10, 25, 100)                # cells trained, at which the picked cell is read
RANDOM_RUNS = 1000
RANDOM_LENGTH = 2000
PAPER = {"validity": 0.9897, "uniqueness": 0.9870, "novelty": 0.4920}  # [3P] table, NB201, 1k cells
METHODS = ("DiffusionNAG (guided)", "unguided", "predictor-filtered random", "random search")


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
    """The predictor trained on every task but ``task`` for ``PREDICTOR_STEPS`` steps (cached)."""
    folder = CACHE / f"predictor-without-{task.replace('/', '-').replace(' ', '-')}-{PREDICTOR_STEPS}"
    if (folder / "config.json").exists() and not quick:
        return load_module_folder(folder, "AccuracyPredictor")
    others = tuple(t for t in TASKS if t != task)
    net, _ = train_nag.train_predictor(others, steps=200 if quick else PREDICTOR_STEPS, progress=False)
    if not quick:
        net.save_pretrained(folder, safe_serialization=True)
    return net


def ordered_by_prediction(cells: list[str], predictor, code) -> list[str]:
    distinct = sorted(set(cells))
    pred = nag.predict(predictor, distinct, code)
    return [distinct[i] for i in np.argsort(-pred, kind="stable")]


def pool(score, predictor, code, scale: float, seed: int, steps: int, n: int, cache: dict) -> list[str | None]:
    """``n`` cells sampled at ``scale`` (unguided pools do not depend on the task: cached by seed)."""
    key = (seed, steps, n) if scale == 0 else None
    if key in cache:
        return cache[key]
    cells = run_to_end(nag.sample_cells(score, predictor, code, scale, n, seed, steps))
    if key is not None:
        cache[key] = cells
    return cells


def one_run(order: list[str], values: dict[str, float], test: dict[str, float], target: float) -> dict:
    """A search's figures from the order it trains cells in."""
    curve = best_so_far(order, values) if order else np.zeros(1)
    picked = chosen_so_far(order, values)
    out = {"trained_to_top1": trained_to_reach(curve, target), "curve": curve}
    for k in BUDGETS:
        cell = picked[min(k, len(picked)) - 1] if picked else None
        out[f"val_after_{k}"] = values[cell] if cell else 0.0
        out[f"test_after_{k}"] = test[cell] if cell else 0.0
    return out


def selection(task: str, score, predictor, values, test, steps: int, n: int, seeds, cache: dict) -> dict:
    """Search at every scale of ``CHOICES`` on ``seeds``; the task's scale is the one needing the fewest
    cells to the top 1% (median over ``seeds``; ties: higher mean best validation accuracy after 25)."""
    target = top_fraction(values)
    code = nag.task_code(predictor, task)
    rows = []
    for w in CHOICES:
        runs, gen = [], []
        for seed in seeds:
            cells = pool(score, predictor, code, w, seed, steps, n, cache)
            valid = [a for a in cells if a is not None]
            gen.append(cells)
            runs.append(one_run(ordered_by_prediction(valid, predictor, code), values, test, target))
        valid = [a for cells in gen for a in cells if a is not None]
        acc = np.array([values[a] for a in valid])
        reach = [r["trained_to_top1"] for r in runs]
        rows.append({"scale": w, "trained_to_top1_per_run": reach, "median_trained_to_top1": float(np.median(reach)),
                     "mean_val_after_25": float(np.mean([r["val_after_25"] for r in runs])),
                     "validity": len(valid) / sum(len(c) for c in gen),
                     "distinct_per_run": float(np.mean([len({a for a in c if a is not None}) for c in gen])),
                     "mean_val_acc": float(acc.mean()) if len(acc) else None,
                     "top1_share": float((acc >= target).mean()) if len(acc) else None})
    best = min(rows, key=lambda r: (r["median_trained_to_top1"], -r["mean_val_after_25"]))
    return {"seeds": list(seeds), "rows": rows, "chosen_scale": best["scale"]}


def summary(runs: list[dict], n_pool: int) -> dict:
    reach = [r["trained_to_top1"] for r in runs]
    med, lo, hi = bootstrap_median(reach)
    out = {"runs": len(runs), "trained_to_top1_per_run": [float(v) for v in reach] if len(runs) <= 50 else None,
           "median_trained_to_top1": med, "median_ci": [lo, hi], "reached_top1": float(np.mean(np.isfinite(reach))),
           "curve_median": [float(np.median([r["curve"][min(k, len(r["curve"])) - 1] for r in runs]))
                            for k in range(1, n_pool + 1)]}
    for k in BUDGETS:
        for split in ("val", "test"):
            e = bootstrap_mean([r[f"{split}_after_{k}"] for r in runs])
            out[f"{split}_after_{k}"] = [e.value, e.low, e.high]
    return out


def search(task: str, score, predictor, values, test, scale: float, seeds, steps: int, n: int, cache: dict) -> dict:
    """The four methods on ``seeds`` (DiffusionNAG at ``scale``), with intervals and ratios."""
    from scipy.stats import spearmanr

    target = top_fraction(values)
    code = nag.task_code(predictor, task)
    space_cells = sorted(values)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in seeds:
        for name, w in (("DiffusionNAG (guided)", scale), ("unguided", 0.0)):
            cells = [a for a in pool(score, predictor, code, w, seed, steps, n, cache) if a is not None]
            runs[name].append(one_run(ordered_by_prediction(cells, predictor, code), values, test, target))
        rng = np.random.default_rng(seed)
        drawn = [space_cells[i] for i in rng.choice(len(space_cells), n, replace=False)]
        runs["predictor-filtered random"].append(one_run(ordered_by_prediction(drawn, predictor, code), values,
                                                         test, target))
    # random search trains up to RANDOM_LENGTH cells (it reaches the top 1% within that in all but ~1e-9 of runs)
    runs["random search"] = [one_run(o, values, test, target)
                             for o in random_orders(values, RANDOM_RUNS, max(n, RANDOM_LENGTH), seed=1)]
    pred = nag.predict(predictor, space_cells, code)
    out = {"task": task, "scale": scale, "seeds": list(seeds), "space_cells": len(values), "top1_threshold": target,
           "predictor_spearman": float(spearmanr(pred, [values[a] for a in space_cells])[0]),
           "methods": {m: summary(r, n) for m, r in runs.items()}}
    def capped(m):  # a run that never reaches the top 1% within its pool counts as pool + 1 in the ratios
        return [min(r["trained_to_top1"], n + 1) for r in runs[m]]

    rand = capped("random search")
    for m in METHODS[:3]:
        out["methods"][m]["times_fewer_than_random"] = list(bootstrap_ratio(rand, capped(m)))
    guided = capped("DiffusionNAG (guided)")
    for m in ("unguided", "predictor-filtered random"):
        other = capped(m)
        out["methods"][m]["times_more_than_guided"] = list(bootstrap_ratio(other, guided))
    return out


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


def _partial(quick: bool) -> Path:
    return CACHE / ("partial-quick.json" if quick else "partial.json")


def main(quick: bool = False, extras: bool = False) -> dict:
    torch.set_num_threads(1 if not extras else 2)
    table = nasbench.table()
    zoo = load_zoo("nag-digits")
    score = zoo.score
    steps = 20 if quick else STEPS
    n = 50 if quick else POOL
    sel_seeds, rep_seeds = (SELECTION_SEEDS[:1], REPORT_SEEDS[:2]) if quick else (SELECTION_SEEDS, REPORT_SEEDS)
    results: dict = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "steps": steps,
                     "pool": n, "predictor_steps": 200 if quick else PREDICTOR_STEPS, "choices": list(CHOICES),
                     "selection_seeds": list(sel_seeds), "report_seeds": list(rep_seeds), "random_runs": RANDOM_RUNS,
                     "default_scale": nag.DEFAULT_SCALE}
    old = ROOT / "results" / "nag.json"
    if extras or not old.exists():
        split = set(nasbench.score_split(zoo.info.get("score_split_seed", 0)))
        results["timing_100_cells_s"] = {k: timing(score, zoo.predictor, k) for k in ((20,) if quick else
                                                                                   (nag.DEFAULT_STEPS, nag.N_STEPS))}
        code = nag.task_code(zoo.predictor, "all ten")
        results["vun"] = {}
        for name, w in (("unguided", 0.0), ("guided", nag.DEFAULT_SCALE)):
            cells = run_to_end(nag.sample_cells(score, zoo.predictor, code, w, 100 if quick else 1000, 1000,
                                                20 if quick else nag.DEFAULT_STEPS))
            results["vun"][name] = vun(cells, split)
        results["extras_date"] = results["date"]
    else:
        prev = json.loads(old.read_text())
        results["timing_100_cells_s"], results["vun"] = prev["timing_100_cells_s"], prev["vun"]
        results["extras_date"] = prev.get("extras_date", prev["date"])
    results["seed_agreement"] = seed_agreement()
    partial = json.loads(_partial(quick).read_text()) if _partial(quick).exists() else {}
    results["selection"], results["search"] = {}, []
    cache: dict = {}
    for task in tuple(TASKS)[:1] if quick else TASKS:
        if task in partial:
            results["selection"][task], found = partial[task]
            results["search"].append(found)
            continue
        values, test = space_values(task, table), {a: r["test_acc"] for a, r in table[task].items()}
        predictor = transfer_predictor(task, quick)
        sel = selection(task, score, predictor, values, test, steps, n, sel_seeds, cache)
        found = search(task, score, predictor, values, test, sel["chosen_scale"], rep_seeds, steps, n, cache)
        results["selection"][task] = sel
        results["search"].append(found)
        partial[task] = [sel, found]
        CACHE.mkdir(parents=True, exist_ok=True)
        _partial(quick).write_text(json.dumps(partial, default=float))
        print(task, "scale", sel["chosen_scale"], "median trained to top 1%:",
              found["methods"]["DiffusionNAG (guided)"]["median_trained_to_top1"], flush=True)
    return results


def _reach(v: float, n: int) -> str:
    return f"> {n}" if not np.isfinite(v) else f"{v:g}"


def _ci(v: list, fmt: str = "{:.4f}") -> str:
    return f"{fmt.format(v[0])} [{fmt.format(v[1])}, {fmt.format(v[2])}]"


def markdown(r: dict) -> str:
    n = r["pool"]
    lines = [f"Machine: {r['machine']}, {r['date']}. Accuracies are this studio's digits ground truth (mean of two "
             "training seeds per cell), **not** NAS-Bench-201's CIFAR figures. Searches rank and select by "
             "validation accuracy (360 digits split off the training digits); test accuracy (the 360 test digits) is "
             "only read for the cell a search picks.", "",
             f"Budget-reduced run (issue 19): sampler {r['steps']} steps (the tab: 200), pool of {n} cells per run "
             f"(official num-gen-arch: 500), transfer predictors trained {r['predictor_steps']} steps (zoo recipe: "
             "3,000). The predictor is the studio's transformer reader, not the official directed-GCN "
             "(docs/nag.md, deviations).", "",
             f"**Selection seeds** (the guidance scale is chosen on these): {', '.join(map(str, r['selection_seeds']))}. "
             f"**Report seeds** (every search figure below): {', '.join(map(str, r['report_seeds']))}; random search: "
             f"{r['random_runs']} runs. Intervals: 95% percentile bootstrap over runs.", "",
             "Guidance scale per task, chosen on the selection seeds (fewest cells trained to reach the top 1%, median "
             "over the selection seeds; ties: higher best validation accuracy after 25). Validity, distinct cells and "
             "the generated cells' mean validation accuracy are from the same runs:", "",
             "| task | scale | trained to top 1% per selection run | median | best val after 25 | validity "
             "| distinct valid cells per run | mean val acc of generated | share in top 1% | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, sel in r["selection"].items():
        for row in sel["rows"]:
            per = ", ".join(_reach(v, n) for v in row["trained_to_top1_per_run"])
            acc = "-" if row["mean_val_acc"] is None else f"{row['mean_val_acc']:.4f}"
            top = "-" if row["top1_share"] is None else f"{row['top1_share']:.3f}"
            lines.append(f"| {task} | {row['scale']:g} | {per} | {_reach(row['median_trained_to_top1'], n)} | "
                         f"{row['mean_val_after_25']:.4f} | {row['validity']:.3f} | {row['distinct_per_run']:.0f} | "
                         f"{acc} | {top} | {'**chosen**' if row['scale'] == sel['chosen_scale'] else ''} |")
    lines += ["", "Search efficiency on the report seeds: cells trained before one reaches the space's top 1% (median "
              f"[95% CI]; '> {n}' where runs never do), how many times fewer than random search (ratio of medians "
              f"[CI]; a pool run that never reaches the top 1% counts as {n + 1} in every ratio, random search trains "
              f"up to {RANDOM_LENGTH:,} cells), and the cell a search has picked after k cells trained (best validation so far): its mean "
              "validation / test accuracy [CI]:", "",
              "| task | method | trained to top 1% | runs reaching it | x fewer than random | after 10: val | test "
              "| after 25: val | test | after 100: val | test |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["search"]:
        for name, m in s["methods"].items():
            label = f"{name}, w = {s['scale']:g}" if name.startswith("DiffusionNAG") else name
            med = m["median_trained_to_top1"]
            reach = f"{_reach(med, n)} [{_reach(m['median_ci'][0], n)}, {_reach(m['median_ci'][1], n)}]"
            ratio = _ci(m["times_fewer_than_random"], "{:.1f}") if "times_fewer_than_random" in m else "-"
            cells = " | ".join(_ci(m[f"{sp}_after_{k}"]) for k in BUDGETS for sp in ("val", "test"))
            lines.append(f"| {s['task']} | {label} | {reach} | {m['reached_top1']:.0%} | {ratio} | {cells} |")
    lines += ["", "Against DiffusionNAG on the same report seeds (ratio of medians of cells trained to the top 1%, "
              "[CI]; above 1: the baseline needed more; an interval covering 1 is no difference):", "",
              "| task | unguided / guided | predictor-filtered random / guided |", "|---|---|---|"]
    for s in r["search"]:
        m = s["methods"]
        lines.append(f"| {s['task']} | {_ci(m['unguided']['times_more_than_guided'], '{:.2f}')} | "
                     f"{_ci(m['predictor-filtered random']['times_more_than_guided'], '{:.2f}')} |")
    lines += ["", "How much there is to find: the ground truth's two seeds against each other, and the transfer "
              "predictor against the truth (mean of the seeds) on the task it never saw (Spearman over the space):", "",
              "| task | seeds' Spearman | seed 0's top 1% in seed 1's | transfer predictor's Spearman |",
              "|---|---|---|---|"]
    pred_rho = {s["task"]: s["predictor_spearman"] for s in r["search"]}
    for task, a in r["seed_agreement"].items():
        rho = f"{pred_rho[task]:.3f}" if task in pred_rho else "-"
        lines.append(f"| {task} | {a['spearman']:.3f} | {a['top1_kept']:.0%} | {rho} |")
    when = ("Measured in this run (`--extras`" if r["extras_date"] == r["date"]
            else f"Not re-run here (measured {r['extras_date']}; `--extras` re-runs them")
    lines += ["", f"{when}; they do not depend on the per-task scale): validity / uniqueness / novelty of 1,000 cells "
              "(task all ten, the shipped "
              f"predictor, scale {r['default_scale']:g}, 200 steps; novelty against the score network's training half):",
              "", "| sampling | validity | uniqueness | novelty |", "|---|---|---|---|"]
    for name, v in r["vun"].items():
        lines.append(f"| {name} | {v['validity']:.3f} | {v['uniqueness']:.3f} | {v['novelty']:.3f} |")
    lines.append(f"| paper (NB201, [3P] table; context only) | {PAPER['validity']:.4f} | {PAPER['uniqueness']:.4f} "
                 f"| {PAPER['novelty']:.4f} |")
    lines += ["", "Seconds to generate 100 cells (2 threads, best of two at 200 steps; goal: under 10):", "",
              "| sampler steps | unguided | guided |", "|---|---|---|"]
    for k, t in r["timing_100_cells_s"].items():
        lines.append(f"| {k} | {t['unguided']:.1f} | {t['guided']:.1f} |")
    return "\n".join(lines) + "\n"


def _log_points(n: int, count: int = 80) -> np.ndarray:
    """Indices 0..n-1 spaced evenly on a log axis (the charts' x), so the file stays small."""
    return np.unique(np.round(np.logspace(0, np.log10(n), count)).astype(int) - 1)


def plot(r: dict, table: dict, path: Path) -> None:
    """The search-efficiency curves on the report seeds, one chart per task: each pool method's median
    best-so-far over its seeds, and random search's median and interquartile band (1,000 runs)."""
    from studio.plots import efficiency_chart

    parts = []
    for s in r["search"]:
        values = space_values(s["task"], table)
        curves = {}
        for name, m in s["methods"].items():
            if name != "random search":
                k = _log_points(len(m["curve_median"]))
                label = f"{name}, w = {s['scale']:g}" if name.startswith("DiffusionNAG") else name
                curves[label] = (k + 1, np.array(m["curve_median"])[k])
        k = _log_points(r["pool"])
        rand = random_search_curves(values, RANDOM_RUNS, r["pool"], seed=1)[:, k]
        curves["random search"] = (k + 1, *np.percentile(rand, [50, 25, 75], axis=0))
        fig = efficiency_chart(curves, s["top1_threshold"], f"{s['task']}: best validation accuracy vs cells trained "
                               f"(median of report seeds {s['seeds']}; random search: median and IQR)", height=380)
        parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn" if not parts else False))
    path.write_text("<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--extras", action="store_true", help="re-run validity/uniqueness/novelty and the timing")
    args = ap.parse_args()
    res = main(args.quick, args.extras)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stem = "nag-quick" if args.quick else "nag"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=float))
    (out / f"{stem}.md").write_text(markdown(res))
    plot(res, nasbench.table(), out / f"{stem}_search.html")
    print(markdown(res))
