"""InvDiff on the biased shapes world: does it lower the bias without bias labels, at what cost in quality?

Rows (every delta trained by :func:`studio.train.invdiff.train_delta`: the same biased model, delta
initialisation, steps, batch, optimiser, caption dropout, timesteps and seeds; only the groups and
lambda differ):

* ``shapes-t2i``: the model before the biased fine-tune (context: the world's unbiased model);
* **biased**: ``shapes-biased`` alone (r = 0);
* **prompting**: the biased model asked "a red or blue circle" (the issue's prompt baseline);
* **InvDiff** (``invdiff-shapes``, the zoo's: groups inferred from the losses against the clean images,
  as the official grouper reads them), at r = 0.5, 0.8 (the official scripts' value) and 1.0;
* **InvDiff, grouper on the training targets** (the notes' flag: the official grouper compares the
  prediction with the latents, not with the noise targets the model was trained on), r = 0.8;
* **oracle**: hard groups from the true attribute (triangle / majority colour / minority colour), lambda 1;
* **reweighting**: InvDiff's inferred groups, lambda 0 (group means averaged, the variance term off);
* **plain delta**: one group (the group loss off: delta fine-tuned on the biased data with the mix),
  the ablation that isolates InvDiff's idea from "train a second module".

Measured, for each row, with the report seeds (image i of a prompt from noise seed 90,000 + i):

* the **bias score** (the official formula over red / blue, 0 balanced) of "a circle" and "a square",
  64 images each, read by the shapes judge (trained on the unbiased world by neither model); 95%
  bootstrap intervals over the seeds, and each row minus the biased model paired on the seeds;
* **judge accuracy** on the four coloured prompts ("a red circle", "a blue circle", "a red square",
  "a blue square"; 32 images each): does the model still draw what is asked, the minority pairs included;
* **FD-shapes** of those 128 images against 1,024 real renders of the same four concepts (``fd-shapes``
  features; a toy-scale Frechet distance, not FID), paired with the biased model's;
* the inferred groups' purity and NMI against the true attribute (both grouper targets).

Nothing is chosen on the report seeds: r is reported as a grid, 0.8 fixed beforehand as the official
value; no other setting was tuned. ``python benchmarks/bench_debias.py`` trains what is missing
(resumable, ``runs/bench-debias-*``; about 15 minutes per delta on 2 cores), then writes
``benchmarks/results/debias.json`` / ``.md``; ``--only ROW ...`` measures those rows
only (training a missing module; every row is cached on its own under ``runs/bench-debias/``, so two
invocations on one thread each share the work); ``--quick`` is a smoke run (a few steps and images, nothing
written to results).

``--fewer-steps``: the Debias tab's scheduler and steps by quality per second (issue 29): the rows the tab draws
at fewer steps of DPM-Solver++, UniPC and DDIM against its default, chosen on seeds 70,000 + i by margins fixed
before the sweep (below), checked on the report seeds; ``results/debias_steps.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import invdiff as I
from studio.core.loading import load_zoo
from studio.core.metrics import (bias_score, bootstrap_mean, features, frechet_features,
                                 frechet_paired_difference, shapes_colours_of)
from studio.data import biased_shapes as B
from studio.data import shapes
from studio.evaluate import admitted_steps
from studio.train import invdiff as T
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
REPORT_SEED, N_BIAS, N_COLOURED, N_REAL = 90_000, 64, 32, 1024
COLOURED = ("a red circle", "a blue circle", "a red square", "a blue square")
PROMPTING = {"a circle": "a red or blue circle", "a square": "a red or blue square"}
RATIOS = (0.5, 0.8, 1.0)
DELTAS = ("targets", "oracle", "reweight", "plain")  # trained here; "latents" is the zoo's invdiff-shapes
ROWS = ("shapes-t2i", "biased", "prompting", *(f"invdiff-{r:g}" for r in RATIOS), *DELTAS)
LABELS = {"shapes-t2i": "shapes-t2i (before the biased fine-tune; context)", "biased": "biased model (r = 0)",
          "prompting": "biased model, prompt 'a red or blue ...'",
          "targets": "InvDiff, grouper on the training targets, r = 0.8",
          "oracle": "oracle: hard groups from the true attribute, r = 0.8",
          "reweight": "reweighting: inferred groups, lambda 0, r = 0.8",
          "plain": "plain delta: one group (the group loss off), r = 0.8",
          **{f"invdiff-{r:g}": f"InvDiff (zoo, grouper on the clean images), r = {r:g}" for r in RATIOS}}


def delta_weights(row: str, dm, data: B.BiasedSet) -> tuple[torch.Tensor, float]:
    """(soft group weights (n, G), lambda) of a trained-here row."""
    if row == "targets":
        return T.groups_for(dm, data, target="targets")["weights"], T.LAMBDA
    if row == "oracle":
        return torch.nn.functional.one_hot(torch.from_numpy(data.true_groups), 3).float(), T.LAMBDA
    if row == "reweight":
        return T.groups_for(dm, data)["weights"], 0.0
    if row == "plain":
        return torch.ones(len(data), 1), T.LAMBDA
    raise ValueError(f"unknown row {row!r}; choose from {', '.join(DELTAS)}")


def train_row(row: str, steps: int = T.DELTA_STEPS) -> torch.nn.Module:
    dm, data = load_zoo("shapes-biased"), B.training_set()
    weights, lam = delta_weights(row, dm, data)
    delta, _ = T.train_delta(dm, data, weights, lam=lam, steps=steps, run=f"bench-debias-{row}")
    return delta


def conditions(prompts: list[str], n: int) -> tuple[dict, dict]:
    cond = T.caption_conditions([p for p in prompts for _ in range(n)] + [""] * (n * len(prompts)))
    k = n * len(prompts)
    return {key: v[:k] for key, v in cond.items()}, {key: v[k:] for key, v in cond.items()}


@torch.no_grad()
def draw(dm, delta, r: float, prompts: list[str], n: int, seed: int = REPORT_SEED, sampler: tuple | None = None
         ) -> torch.Tensor:
    """(len(prompts) * n, 3, 32, 32): prompt j's image i from noise seed ``seed + i``, with ``sampler``
    (scheduler, steps), by default the model's own (its studio.json, the Debias tab's default)."""
    from studio.core.sampling import run_to_end

    c, u = conditions(prompts, n)
    seeds = [seed + i for _ in prompts for i in range(n)]
    scheduler, steps = sampler or (dm.info.get("default_scheduler", "dpm++"), int(dm.info.get("default_steps", 15)))
    return run_to_end(I.sample(dm, delta, r, c, u, seeds, guidance=float(dm.info.get("default_guidance", 2.0)),
                               scheduler=scheduler, steps=steps))


def bias_of(cols: list[str | None]) -> float | None:
    among = [cols.count(c) for c in B.PROMPT_COLOURS]
    return bias_score(among) if sum(among) else None


def mean_bias(per_prompt: dict[str, list], idx) -> float:
    """Mean bias score over the prompts of the images ``idx`` (a prompt with no red or blue image left out;
    nan when none has one)."""
    scores = [bias_of([c[j] for j in idx]) for c in per_prompt.values()]
    scores = [v for v in scores if v is not None]
    return float(np.mean(scores)) if scores else float("nan")


def bias_estimate(per_prompt: dict[str, list], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean bias score over the prompts, with a percentile bootstrap over seeds (one resample of seed
    indices shared by the prompts)."""
    n = len(next(iter(per_prompt.values())))
    rng = np.random.default_rng(seed)
    boots = [mean_bias(per_prompt, rng.integers(0, n, n)) for _ in range(n_boot)]
    return {"value": mean_bias(per_prompt, np.arange(n)), "low": float(np.nanquantile(boots, 0.025)),
            "high": float(np.nanquantile(boots, 0.975))}


def bias_difference(a: dict[str, list], b: dict[str, list], n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean bias score of ``b`` minus ``a``, paired on the seeds."""
    n = len(next(iter(a.values())))
    rng = np.random.default_rng(seed)
    boots = [mean_bias(b, i) - mean_bias(a, i) for i in (rng.integers(0, n, n) for _ in range(n_boot))]
    every = np.arange(n)
    return {"value": mean_bias(b, every) - mean_bias(a, every), "low": float(np.nanquantile(boots, 0.025)),
            "high": float(np.nanquantile(boots, 0.975))}


def real_coloured(n: int = N_REAL, seed: int = 7) -> torch.Tensor:
    """Real renders of the four coloured concepts in random regions, ``n`` in all (the FD reference)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        shape, colour = COLOURED[k % len(COLOURED)].split()[2], COLOURED[k % len(COLOURED)].split()[1]
        obj = shapes.random_scene(rng, n_objects=1).objects[0]
        obj = shapes.ShapeObject(shape, colour, obj.region, obj.cx, obj.cy, obj.radius)
        out.append(shapes.render(shapes.Scene((obj,))))
    return shapes.to_model_range(np.stack(out).transpose(0, 3, 1, 2).copy())


def measure(dm, delta, r: float, judge, fdnet, n_bias: int, n_col: int, prompts: dict[str, str] | None = None,
            seed: int = REPORT_SEED, sampler: tuple | None = None) -> dict:
    """One row: colours per bias prompt (``prompts`` maps "a circle" to what is asked instead), judge hits
    on the coloured prompts, their fd-shapes features."""
    asked = prompts or {p: p for p in B.PROMPTS}
    x = draw(dm, delta, r, list(asked.values()), n_bias, seed, sampler)
    cols = {p: shapes_colours_of(judge, x[k * n_bias:(k + 1) * n_bias], p.split()[-1]) for k, p in enumerate(asked)}
    y = draw(dm, delta, r, list(COLOURED), n_col, seed, sampler)
    from studio.core.metrics import shapes_concept_hits

    concepts = [shapes.parse_concept(p) for p in COLOURED for _ in range(n_col)]
    hits = shapes_concept_hits(judge, y, concepts)["shape_colour"]
    return {"colours": cols, "hits": hits.tolist(), "features": features(fdnet, y).tolist()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", "--train", nargs="*", choices=ROWS, dest="only",
                    help="only measure these rows (training a module that is missing; each row cached on its own), "
                         "then stop: two invocations on one thread each share the work")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 training steps, 8 images, no results")
    ap.add_argument("--fewer-steps", action="store_true",
                    help="only the tab's scheduler and steps by quality per second (results/debias_steps.md)")
    args = ap.parse_args(argv)
    if args.fewer_steps:
        fewer_steps()
        return
    t0 = time.time()
    steps, n_bias, n_col = (4, 8, 4) if args.quick else (T.DELTA_STEPS, N_BIAS, N_COLOURED)
    cache = RUNS_DIR / ("bench-debias-quick" if args.quick else "bench-debias")
    biased, judge, fdnet = load_zoo("shapes-biased"), load_zoo("judge-shapes"), load_zoo("fd-shapes")

    def row_of(name: str, plan) -> dict:
        """A row's measurement, cached in its own file (two invocations may measure side by side)."""
        path = cache / f"row-{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        dm, delta, r, prompts = plan()
        print(f"measuring {name}", file=sys.stderr)
        out = measure(dm, delta, r, judge, fdnet, n_bias, n_col, prompts)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
        return out

    def trained(row: str):
        if args.quick:  # the smoke run trains a few steps into runs of its own
            weights, lam = delta_weights(row, biased, B.training_set())
            delta = T.train_delta(biased, B.training_set(), weights, lam=lam, steps=steps,
                                  run=f"bench-debias-quick-{row}")[0]
        else:
            delta = train_row(row)
        return biased, delta, T.RATIO, None

    zoo_delta = lambda: load_zoo("invdiff-shapes").delta  # noqa: E731
    plans = {"shapes-t2i": lambda: (load_zoo("shapes-t2i"), None, 0.0, None), "biased": lambda: (biased, None, 0.0, None),
             "prompting": lambda: (biased, None, 0.0, PROMPTING),
             **{f"invdiff-{r:g}": (lambda r=r: (biased, zoo_delta(), r, None)) for r in RATIOS},
             **{row: (lambda row=row: trained(row)) for row in DELTAS}}
    if args.only:
        for name in args.only:
            row_of(name, plans[name])
        return
    rows = {name: row_of(name, plan) for name, plan in plans.items()}
    real = features(fdnet, real_coloured(n_col * 16 if args.quick else N_REAL))
    grouping = {t: I.purity(T.groups_for(biased, B.training_set(), target=t)["weights"], B.training_set().true_groups)
                for t in I.GROUPER_TARGETS}
    summary = summarise(rows, real, grouping)
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    summary["machine"] = machine_description()
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "debias.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS / "debias.md").write_text(markdown(summary) + "\n")


def summarise(rows: dict, real: np.ndarray, grouping: dict) -> dict:
    base = rows["biased"]
    out = {}
    for row, m in rows.items():
        hits = np.asarray(m["hits"])
        feats = np.asarray(m["features"])
        fd = frechet_features(feats, real)
        per_prompt = {p: {c: cols.count(c) for c in shapes.COLOURS + (None,)} for p, cols in m["colours"].items()}
        out[row] = {
            "label": LABELS[row], "counts": {p: {str(k): v for k, v in c.items()} for p, c in per_prompt.items()},
            "bias": bias_estimate(m["colours"]),
            "bias_minus_biased": None if row == "biased" else bias_difference(base["colours"], m["colours"]),
            "shape_found": float(np.mean([c is not None for cols in m["colours"].values() for c in cols])),
            "coloured_accuracy": vars_of(bootstrap_mean(hits)),
            "coloured_accuracy_minus_biased": None if row == "biased" else vars_of(  # paired on the seeds
                bootstrap_mean(hits - np.asarray(base["hits"]))),
            "fd": {"value": fd.value, "low": fd.low, "high": fd.high},
            "fd_minus_biased": None if row == "biased" else vars_of(
                frechet_paired_difference(real, np.asarray(base["features"]), feats)),
        }
    return {"rows": out, "grouping": grouping,
            "report_seeds": f"{REPORT_SEED} + i", "n_bias": len(next(iter(base["colours"].values()))),
            "n_coloured": len(base["hits"]) // len(COLOURED)}


def vars_of(e) -> dict:
    return {"value": e.value, "low": e.low, "high": e.high}


def fmt(e: dict | None, signed: bool = False) -> str:
    if e is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f"{f.format(e['value'])} [{f.format(e['low'])}, {f.format(e['high'])}]"
    return text + (" no difference" if signed and e["low"] <= 0 <= e["high"] else "")


def markdown(s: dict) -> str:
    lines = [f"Machine: {s['machine']}; {s['minutes']} min this invocation (rows cached under runs/bench-debias/ "
             "were read, not re-run).", "",
             f"Report seeds: image i of each prompt from noise seed {s['report_seeds']}; {s['n_bias']} images per bias "
             f"prompt ('a circle', 'a square'), {s['n_coloured']} per coloured prompt. Selection set: none, because nothing was chosen (no setting was tuned on any seeds): r is "
             "a grid, 0.8 the official value fixed beforehand. Intervals: 95% bootstrap over the seeds; differences "
             "paired on the seeds; an interval covering zero is *no difference*. FD-shapes is a Frechet distance on "
             "the studio's `fd-shapes` features against 1,024 real renders of the four coloured concepts: a toy-scale "
             "figure, not FID.", "",
             "| row | bias score (mean of circle, square) | minus biased | shape found | judge accuracy, coloured prompts "
             "| minus biased | FD-shapes | minus biased |", "|---|---|---|---|---|---|---|---|"]
    for row in s["rows"].values():
        lines.append(f"| {row['label']} | {fmt(row['bias'])} | {fmt(row['bias_minus_biased'], True)} | "
                     f"{row['shape_found']:.3f} | {fmt(row['coloured_accuracy'])} | "
                     f"{fmt(row['coloured_accuracy_minus_biased'], True)} | {fmt(row['fd'])} | "
                     f"{fmt(row['fd_minus_biased'], True)} |")
    lines += ["", "Colours the judge reads (red / blue / other colours / no such shape):", "",
              "| row | a circle | a square |", "|---|---|---|"]
    for row in s["rows"].values():
        cells = []
        for p in B.PROMPTS:
            c = row["counts"][p]
            other = sum(v for k, v in c.items() if k not in ("red", "blue", "None"))
            cells.append(f"{c['red']} / {c['blue']} / {other} / {c['None']}")
        lines.append(f"| {row['label']} | {' | '.join(cells)} |")
    lines += ["", "Inferred groups (argmax of the soft weights, 8 groups, alpha 3) against the true attribute "
              "(triangle / majority colour / minority colour; measured only):", "",
              "| grouper target | purity | NMI | largest share of the minority in one group |", "|---|---|---|---|"]
    for t, g in s["grouping"].items():
        best = max(g["groups"].values(), key=lambda v: v.get("2", 0.0))
        lines.append(f"| {t} | {g['purity']:.3f} | {g['nmi']:.3f} | {best.get('2', 0.0):.0%} of a group of "
                     f"{best['size']} |")
    return "\n".join(lines)


# --- quality per second: the Debias tab's scheduler and steps (issue 29, part 2) ------------------------------

# A point (one row, 256 images) costs ~80 s per 15 steps per network on 2 cores, the mix two networks: the grid is
# cut to what can change the default (Euler, the weakest of the four at few steps in the Generate sweep, left out)
STEP_GRID = {name: (6, 8, 10, 15) for name in ("dpm++", "unipc", "ddim")}
SELECT_SEED = 70_000  # the sweep's seeds (image i of a prompt from 70,000 + i); the report seeds chose nothing
# The rule, fixed in this file before the first sweep was drawn. The Guide sweep's equivalence margins (a margin
# has to be shown by the paired interval, not merely not refuted), plus the tab's own readout, the bias score, and
# for BOTH rows the tab draws (the biased model and InvDiff's mix at the tab's r): a setting passes where, paired on
# the seeds with the default, judge accuracy on the coloured prompts has its lower 95% end >= -ACC_MARGIN, FD-shapes
# its upper end <= FD_MARGIN x the default's FD-shapes, and the bias score's interval lies inside +-BIAS_MARGIN.
# It is ADMITTED only where every larger step count of the same scheduler in the grid passes as well (last stop's
# lesson: "fewest that passes" picked an edge setting between two that failed). The admitted setting with the
# fewest network evaluations (ties to the lower mean FD) is then checked on the report seeds by the same margins.
ACC_MARGIN, FD_MARGIN, BIAS_MARGIN = 0.05, 0.10, 0.10


def tab_rows() -> dict[str, float]:
    """The rows the Debias tab draws, with their mix ratio: the biased model (r = 0) and InvDiff at the tab's r."""
    from studio.methods import debias

    return {"biased": 0.0, "debiased": debias.Params().r}


def tab_default() -> tuple[str, int]:
    from studio.methods import debias

    p = debias.Params()
    return p.scheduler, p.steps


def passes(diff: dict, default_fd: float) -> bool:
    return (diff["accuracy"]["low"] >= -ACC_MARGIN and diff["fd"]["high"] <= FD_MARGIN * default_fd
            and -BIAS_MARGIN <= diff["bias"]["low"] and diff["bias"]["high"] <= BIAS_MARGIN)


def admitted(rows: list[dict]) -> list[dict]:
    """The rows that pass with every larger step count of their scheduler (in ``rows``) passing too."""
    return admitted_steps(rows, "scheduler")


def paired_to(default: dict, point: dict, real: np.ndarray) -> dict:
    """``point`` minus ``default`` (same seeds): bias score, judge accuracy on the coloured prompts, FD-shapes."""
    hits = np.asarray(point["hits"]) - np.asarray(default["hits"])
    return {"bias": bias_difference(default["colours"], point["colours"]),
            "accuracy": vars_of(bootstrap_mean(hits)),
            "fd": vars_of(frechet_paired_difference(real, np.asarray(default["features"]),
                                                    np.asarray(point["features"])))}


def levels(point: dict, real: np.ndarray) -> dict:
    fd = frechet_features(np.asarray(point["features"]), real)
    return {"bias": bias_estimate(point["colours"]), "accuracy": vars_of(bootstrap_mean(np.asarray(point["hits"]))),
            "fd": {"value": fd.value, "low": fd.low, "high": fd.high}, "seconds": point["seconds"]}


class StepsSweep:
    """Measured points of the tab's rows at (scheduler, steps), cached one file each under
    ``runs/bench-debias/steps`` (a stopped sweep resumes)."""

    def __init__(self):
        from studio.methods import debias

        self.biased, self.module = load_zoo("shapes-biased"), load_zoo(debias.MODEL)
        self.judge, self.fdnet = load_zoo("judge-shapes"), load_zoo("fd-shapes")
        self.cache = RUNS_DIR / "bench-debias" / "steps"
        self.real = features(self.fdnet, real_coloured())

    def point(self, row: str, r: float, sampler: tuple, seed: int) -> dict:
        path = self.cache / f"{row}-{sampler[0]}-{sampler[1]}-{seed}.json"
        if path.exists():
            return json.loads(path.read_text())
        print(f"measuring {row} {sampler} seeds {seed} + i", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        out = measure(self.biased, self.module.delta if r else None, r, self.judge, self.fdnet, N_BIAS, N_COLOURED,
                      seed=seed, sampler=sampler)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
        return out

    def compare(self, sampler: tuple, default: tuple, seed: int) -> dict:
        """Every tab row at ``sampler`` with its levels and its paired difference to ``default``."""
        out = {}
        for row, r in tab_rows().items():
            d, p = self.point(row, r, default, seed), self.point(row, r, sampler, seed)
            out[row] = {**levels(p, self.real), "vs_default": paired_to(d, p, self.real),
                        "default_fd": frechet_features(np.asarray(d["features"]), self.real).value}
        return out


def tab_seconds(sampler: tuple, repeats: int = 3) -> float:
    """Seconds of the Debias tab's run at its defaults but ``sampler`` (16 images from each model, the judge's
    readout included), 2 threads, best of ``repeats`` after a warm-up: what a visitor waits."""
    from studio.core.manager import ModelManager
    from studio.methods import debias

    torch.set_num_threads(2)
    manager = ModelManager()
    manager.register_zoo()
    p = debias.Params(scheduler=sampler[0], steps=sampler[1])

    def once() -> float:
        t0 = time.perf_counter()
        list(debias.run(p, manager))
        return time.perf_counter() - t0

    once()
    return round(min(once() for _ in range(repeats)), 3)


def fewer_steps() -> dict:
    """The Debias tab's default scheduler and steps against every setting of :data:`STEP_GRID` (the rule above);
    writes ``results/debias_steps.json`` and ``.md``."""
    torch.set_num_threads(2)
    sweep, default = StepsSweep(), tab_default()
    rows = []
    for name, grid in STEP_GRID.items():
        for steps in grid:
            m = sweep.compare((name, steps), default, SELECT_SEED)
            rows.append({"scheduler": name, "steps": steps, "evaluations": steps, "rows": m,
                         "passes": all(passes(v["vs_default"], v["default_fd"]) for v in m.values())})
    allowed = admitted(rows)
    for r in rows:
        r["admitted"] = r in allowed
    ok = [r for r in allowed if (r["scheduler"], r["steps"]) != default]
    mean_fd = lambda r: float(np.mean([v["fd"]["value"] for v in r["rows"].values()]))  # noqa: E731
    chosen = min(ok, key=lambda r: (r["evaluations"], mean_fd(r))) if ok else None
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "default": {"scheduler": default[0], "steps": default[1]}, "rows_drawn": tab_rows(),
           "n_bias": N_BIAS, "n_coloured": N_COLOURED, "selection_seeds": f"{SELECT_SEED} + i",
           "report_seeds": f"{REPORT_SEED} + i",
           "margins": {"accuracy": ACC_MARGIN, "fd_fraction": FD_MARGIN, "bias": BIAS_MARGIN}, "selection": rows,
           "chosen": None if chosen is None else {"scheduler": chosen["scheduler"], "steps": chosen["steps"]}}
    if chosen is not None:
        rep = sweep.compare((chosen["scheduler"], chosen["steps"]), default, REPORT_SEED)
        base = {row: levels(sweep.point(row, r, default, REPORT_SEED), sweep.real) for row, r in tab_rows().items()}
        out["report"] = {"default": base, "chosen": rep,
                         "holds": all(passes(v["vs_default"], v["default_fd"]) for v in rep.values())}
        out["tab_seconds"] = {"default": tab_seconds(default), "chosen": tab_seconds((chosen["scheduler"],
                                                                                    chosen["steps"]))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "debias_steps.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "debias_steps.md").write_text(steps_markdown(out))
    print(steps_markdown(out))
    return out


def steps_markdown(r: dict) -> str:
    d, m = r["default"], r["margins"]
    lines = [f"# Debias: quality per second of the tab's sampler ({r['date']})", "",
             f"Machine: {r['machine']}. The rows the tab draws ({', '.join(f'{k} r = {v:g}' for k, v in r['rows_drawn'].items())}) "
             f"on `shapes-biased` with the zoo's `invdiff-shapes`, guidance 2, at each scheduler and step count; "
             f"{r['n_bias']} images per bias prompt and {r['n_coloured']} per coloured prompt. Default: "
             f"{d['scheduler']} {d['steps']}. Selection seeds: {r['selection_seeds']}; report seeds: "
             f"{r['report_seeds']} (the bench's own; they chose nothing).", "",
             f"Rule (fixed before the sweep): a setting passes where, for both rows, the paired difference to the "
             f"default has judge accuracy (coloured prompts) >= -{m['accuracy']:g} at its lower 95% end, FD-shapes "
             f"<= {m['fd_fraction']:g} x the default's at its upper end, and the bias score inside +-{m['bias']:g}; it "
             "is admitted where every larger step count of its scheduler passes too; the admitted setting with the "
             "fewest network evaluations is checked on the report seeds by the same margins. FD-shapes is a "
             "toy-scale Frechet distance, not FID. Seconds: the sweep's own (256 images of a row, shared machine; "
             "context only).", "",
             "| scheduler | steps | row | bias score | accuracy | FD-shapes | d bias | d accuracy | d FD | passes | "
             "admitted | s (sweep) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["selection"]:
        for k, (name, v) in enumerate(row["rows"].items()):
            dv = v["vs_default"]
            flags = (f"{'yes' if row['passes'] else 'no'} | {'yes' if row['admitted'] else 'no'}" if k == 0
                     else " | ")
            lines.append(f"| {row['scheduler']} | {row['steps']} | {name} | {fmt(v['bias'])} | {fmt(v['accuracy'])} | "
                         f"{fmt(v['fd'])} | {fmt(dv['bias'], True)} | {fmt(dv['accuracy'], True)} | "
                         f"{fmt(dv['fd'], True)} | {flags} | {v['seconds']} |")
    if r["chosen"] is None:
        lines += ["", "No setting is admitted on the selection seeds: the default stays."]
    else:
        c, rep = r["chosen"], r["report"]
        lines += ["", f"Chosen on the selection seeds: **{c['scheduler']} {c['steps']}**. Report seeds:", "",
                  "| row | default: bias / accuracy / FD | chosen: bias / accuracy / FD | d bias | d accuracy | d FD |",
                  "|---|---|---|---|---|---|"]
        for name, v in rep["chosen"].items():
            b, dv = rep["default"][name], v["vs_default"]
            lines.append(f"| {name} | {fmt(b['bias'])} / {fmt(b['accuracy'])} / {fmt(b['fd'])} | {fmt(v['bias'])} / "
                         f"{fmt(v['accuracy'])} / {fmt(v['fd'])} | {fmt(dv['bias'], True)} | "
                         f"{fmt(dv['accuracy'], True)} | {fmt(dv['fd'], True)} |")
        t = r["tab_seconds"]
        lines += ["", f"The margins **{'hold' if rep['holds'] else 'do not hold'}** on the report seeds -> "
                  f"{'adopt' if rep['holds'] else 'the default stays'}. The tab's run (16 images from each model, "
                  f"2 threads, best of 3): default {t['default']} s, chosen {t['chosen']} s "
                  f"({t['default'] / t['chosen']:.2f}x)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
