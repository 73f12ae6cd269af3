"""Forecast benchmark: TSDiff (self-guidance, refinement, synthesis) against statsforecast.

For every bundled series (:mod:`studio.data.series`) and its zoo model ``tsdiff-<series>``
(trained only on the points before the first of the last 5 horizons, ``Series.train_end``):

* **Selection / report split.** The 5 held-out horizons after the training split are cut in
  two: the first ``VAL_ORIGINS`` (2) horizons are the **validation block**, where the guidance
  scale is chosen; the last 3 are the **test block**, where every method is reported. No
  training window covers either block (a training window ends before ``train_end``). Where a
  series has too few held-out horizons for both (fewer than 3), the scale is chosen on the last
  two horizons of the training split instead, and the results say so for that series.
* **Rolling-origin backtest** on the test block: one forecast per origin, each from the history
  up to the origin (baselines refit at each origin).
* **Methods**: statsforecast SeasonalNaive, AutoETS, AutoARIMA (quantiles from their 20/40/60/80%
  Gaussian intervals); TSDiff-Q and TSDiff-MS (DDPM, 100 steps, the official sampler) and
  TSDiff-Q with DDIM at 25 steps (the tab's default until 2026-12-03, now 20: ``--fewer-steps``); SeasonalNaive refined by TSDiff with
  the ML (SGD, lr 0.1) and LMC (eta 0.1, noise 0.1) refiners, 20 iterations. ``--samples``
  samples per forecast, ``--seeds`` seeds for every sampled method.
* **Guidance scale**: chosen per series, guidance and sampler on the validation block (CRPS,
  ``--val-samples`` samples, seed 0). The sweep starts on 1, 2, 4, 8, 16 for quantile guidance
  and 1, 2, 4, 8 for MS (the paper's range is 1 .. 8) and, while its best finite CRPS sits at an
  edge of what was swept, extends that edge by a factor of 2 (:func:`sweep_scales`) until the
  sweep turns over, the next scale diverges (a stated cap: the edge of the stable range) or it
  reaches ``SCALE_LIMITS`` (1/8 .. 256, also stated). The best scale must then be **stable at the
  test's own protocol**: the validation block sampled with ``--samples`` samples at every seed
  the test uses (:func:`choose_stable`); a guided sampler diverges trajectory by trajectory
  (MS: a few percent of them at a marginal scale), so 8 validation samples can miss what 24 x
  2 seeds on the test block hit. A scale that fails is struck and the next best is checked.
* **Scores**: mean weighted quantile loss over q = 0.1..0.9 ("CRPS", GluonTS
  ``mean_wQuantileLoss``, via utilsforecast) and MASE of the median, per origin, averaged over
  seeds, then over the test origins, with a 95% bootstrap interval over the test origins;
  differences against SeasonalNaive and against the better of AutoETS / AutoARIMA are paired
  by origin, and a difference whose interval covers zero is "no difference". Seconds per
  forecast (``--threads`` CPU threads; TSDiff's origins run as one batch and the time is
  divided by their number; cached points keep the seconds of the run that made them).
* **Synthesis**: Linear Predictive Score: a ridge model from context to horizon fit on 500
  synthetic windows (DDPM), scored by CRPS on the real windows that end in the backtest part,
  beside the same ridge model fit on the real training windows (``--carry-lps`` keeps the
  figures of the previous results file instead, labelled so).
* **Quality per second** (``--fewer-steps``): the tab's DDIM steps against fewer (and DDPM 100), chosen on the
  validation origins by a CRPS margin, checked on the test origins (``results/forecast_steps.md``).
* **Tab speed**: seconds from pressing Forecast to the fan chart (``run`` to its first result)
  with the tab's defaults, in-process after one warm-up run (``--carry-tab``: as for LPS).

Writes ``benchmarks/results/forecast.json`` and ``forecast.md``. Run: ``python
benchmarks/bench_forecast.py [--quick] [--series NAME ...]`` (or ``make bench``); finished
points are cached in ``runs/bench-cache/forecast`` (keyed by the model's weights), so a
stopped run resumes; ``--no-report`` only fills the cache (to run series in parallel).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import baselines as B
from studio.core import metrics as M
from studio.core import series_sampling as SS
from studio.core.loading import load_zoo, read_manifest
from studio.core.manager import ModelManager
from studio.data import series as S
from studio.evaluate import admitted_steps
from studio.methods import forecast as F
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
SAMPLES = 100
SCALES = {"quantile": (1.0, 2.0, 4.0, 8.0, 16.0), "mse": (1.0, 2.0, 4.0, 8.0)}  # where each sweep starts
SCALE_LIMITS = (0.125, 256.0)  # a sweep extends by factors of 2 while its best is at an edge, up to these
VAL_SAMPLES = 50
VAL_ORIGINS = 2  # the first held-out horizons, where the scale is chosen
DDIM_STEPS = 25
SYNTHETIC = 500
CACHE = RUNS_DIR / "bench-cache" / "forecast"
THREADS = 2


class Cache:
    def __init__(self, tag: str):
        self.dir = CACHE / tag
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, fn):
        path = self.dir / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        value = fn()
        path.write_text(json.dumps(value))
        return value


def scores(truths, quantiles, histories, season) -> dict:
    """CRPS and MASE per origin (and their means): ``quantiles`` (K, 9, H), truths (K, H)."""
    crps = [M.mean_weighted_quantile_loss(y, {"m": q})["m"] for y, q in zip(truths, quantiles)]
    mase = [M.mase(y, {"m": q[4]}, h, season)["m"] for y, q, h in zip(truths, quantiles, histories)]
    return {"crps": float(np.mean(crps)), "mase": float(np.mean(mase)), "crps_per_origin": [float(c) for c in crps],
            "mase_per_origin": [float(m) for m in mase]}


def tsdiff_forecasts(model, windows, guidance, scale, sampler, steps, seed, samples):
    t0 = time.perf_counter()
    *_, x = SS.observation_guidance(model, windows, num_samples=samples, guidance=guidance, scale=scale,
                                   sampler=sampler, steps=steps, seed=seed)
    seconds = (time.perf_counter() - t0) / len(windows)
    fc = S.forecast_samples(x, windows, windows[0].horizon)
    return np.stack([M.sample_quantiles(s) for s in fc]), seconds


def sweep_scales(score, grid, limits=SCALE_LIMITS) -> tuple[dict, str]:
    """CRPS of ``score(s)`` on ``grid``, extended by factors of 2 beyond an edge that holds the best.

    Returns ``({scale: CRPS}, end)``: ``end`` says how the sweep ended: ``"turned over"`` (the best
    has a finite, worse neighbour on each side), ``"diverged at s"`` (the best is the largest
    stable scale: the next one up diverged), ``"limit s"`` (the best is at ``limits``; both can
    be stated), or ``"none stable"``.
    """
    vals = {float(s): score(float(s)) for s in grid}
    while True:
        ok = [s for s, v in vals.items() if np.isfinite(v)]
        if not ok:
            return vals, "none stable"
        best = min(ok, key=lambda s: (vals[s], s))
        if best == min(vals) and best / 2 >= limits[0]:
            vals[best / 2] = score(best / 2)
        elif best == max(vals) and best * 2 <= limits[1]:
            vals[best * 2] = score(best * 2)
        else:
            break
    above = [s for s in vals if s > best]
    ends = [f"limit {best:g}"] if best == min(vals) else []
    if above and not np.isfinite(vals[min(above)]):  # the next scale up diverged: the stable range ends here
        ends.append(f"diverged at {min(above):g}")
    elif not above:
        ends.append(f"limit {best:g}")
    return vals, "; ".join(ends) or "turned over"


def choose_stable(sweep: dict, stable) -> tuple[float, dict]:
    """The scale of lowest validation CRPS that ``stable(s)`` confirms (the test's own samples and
    seeds on the validation block); struck scales are skipped. Returns (scale, {scale: check})."""
    checks = {}
    for s in sorted((s for s, v in sweep.items() if np.isfinite(v)), key=lambda s: (sweep[s], s)):
        checks[s] = stable(s)
        if checks[s]["stable"]:
            return s, checks
    return float("nan"), checks


def interval(values) -> dict:
    """Mean of per-origin values with a 95% bootstrap interval over the origins."""
    e = M.bootstrap_mean(values, n_boot=2000)
    return {"mean": e.value, "low": e.low, "high": e.high, "n": e.n}


def verdict(diff: dict) -> str:
    """'lower' / 'higher' when the paired interval excludes zero, else 'no difference'."""
    return "lower" if diff["high"] < 0 else "higher" if diff["low"] > 0 else "no difference"


def split(series: S.Series, H: int) -> tuple[list[int], list[int], str]:
    """(validation origins, test origins, where the validation block lies)."""
    origins = series.origin_positions()
    if len(origins) >= VAL_ORIGINS + 1:
        return origins[:VAL_ORIGINS], origins[VAL_ORIGINS:], "held-out"
    # too few held-out horizons for both blocks: the last two horizons of the training split
    return [series.train_end - 2 * H, series.train_end - H], origins, "inside the training split"


def bench_series(name: str, quick: bool, cfg: dict) -> dict:
    series = S.bundled(name)
    key = F.model_key(name)
    files = read_manifest()[key]["files"]
    cache = Cache(f"{key}-{files['model/diffusion_pytorch_model.safetensors']['sha256'][:12]}-split{VAL_ORIGINS}"
                  + ("-quick" if quick else ""))
    model = load_zoo(key)
    H, L, lags = series.horizon, int(model.info["window"]), tuple(model.info["lags"])
    samples, val_samples, seeds = cfg["samples"], cfg["val_samples"], cfg["seeds"]
    val_origins, origins, where = split(series, H)

    def block(pos):
        return ([S.make_window(series.values, o, L, H, lags) for o in pos], [series.values[o:o + H] for o in pos],
                [series.values[:o] for o in pos])

    windows, truths, histories = block(origins)
    val_windows, val_truths, val_hist = block(val_origins)
    label = lambda o: series.labels(o, o + 1)[0]
    out = {"series": name, "title": series.title, "n": len(series), "freq": series.freq, "season": series.season,
           "context": series.context, "horizon": H, "lags": list(lags), "train_end": series.train_end,
           "validation_origins": [label(o) for o in val_origins], "test_origins": [label(o) for o in origins],
           "origins": [label(o) for o in origins], "validation_block": where, "tau": model.info.get("tau"),
           "methods": {}}

    # baselines (deterministic) on the test block
    def baselines():
        rows = [B.baseline_forecasts(h, H, series.season) for h in histories]
        return {b: {"quantiles": [r[b]["quantiles"].tolist() for r in rows],
                    "seconds": float(np.mean([r[b]["seconds"] for r in rows]))} for b in B.BASELINES}

    base = cache.get("baselines", baselines)
    per_origin = {}
    for b, v in base.items():
        sc = scores(truths, np.array(v["quantiles"]), histories, series.season)
        per_origin[b] = sc["crps_per_origin"]
        out["methods"][b] = {**sc, "interval": interval(sc["crps_per_origin"]), "seconds": v["seconds"], "seeds": 1}

    # guidance scale on the validation block: the sweep (extended past an edge that holds the best),
    # then the best scale that stays finite at the test's samples and seeds on the same block
    chosen, sweep, ends, checks = {}, {}, {}, {}
    for guidance, sampler in (("quantile", "ddpm"), ("mse", "ddpm"), ("quantile", "ddim")):
        tag = f"{guidance}-{sampler}"

        def run_val(s, guidance=guidance, sampler=sampler, tag=tag):
            def fn():
                q, _ = tsdiff_forecasts(model, val_windows, guidance, s, sampler, DDIM_STEPS, 0, val_samples)
                return scores(val_truths, q, val_hist, series.season)["crps"]
            return cache.get(f"val-{tag}-{s:g}-n{val_samples}", fn)

        def stable(s, guidance=guidance, sampler=sampler, tag=tag):
            diverged = []
            for seed in seeds:  # stop at the first seed that diverges
                def fn(seed=seed):
                    *_, x = SS.observation_guidance(model, val_windows, num_samples=samples, guidance=guidance,
                                                   scale=s, sampler=sampler, steps=DDIM_STEPS, seed=seed)
                    return int((~torch.isfinite(x)).flatten(2).any(-1).sum())  # diverged trajectories
                diverged.append(cache.get(f"valcheck-{tag}-{s:g}-n{samples}-seed{seed}", fn))
                if diverged[-1]:
                    break
            return {"stable": not any(diverged), "diverged_trajectories": diverged,
                    "of": samples * len(val_windows)}

        sweep[tag], ends[tag] = sweep_scales(run_val, SCALES[guidance])
        chosen[tag], checks[tag] = choose_stable(sweep[tag], stable)
        print(f"  {name} validation {tag}: " + ", ".join(f"{k:g}: {v:.4f}" for k, v in sorted(sweep[tag].items()))
              + f" ({ends[tag]}); stability at {samples} samples x {len(seeds)} seeds: "
              + ", ".join(f"{k:g} {'ok' if c['stable'] else 'diverged'}" for k, c in checks[tag].items())
              + f" -> {chosen[tag]:g}", flush=True)
    out["scale_sweep_validation"] = {t: {k: v for k, v in sorted(sw.items())} for t, sw in sweep.items()}
    out["scale_sweep_end"] = ends
    out["scale_stability_check"] = checks
    out["scale"] = chosen

    jobs = []  # (label, fn, cache key): every sampled method, run seed by seed (all methods' first seed first)

    def sampled(label, fn, key=None):
        """Run ``fn(seed)`` for each seed (cached under ``key``, which names the scale where there is one)."""
        key = key or label
        runs = [cache.get(f"{key}-n{samples}-seed{seed}", lambda seed=seed: fn(seed)) for seed in seeds]
        ok = [r for r in runs if np.isfinite(r["crps"])]  # a guided sampler can diverge (MS at large scales)
        crps = [r["crps"] for r in ok] or [float("nan")]
        row = {"crps": float(np.mean(crps)), "crps_min": min(crps), "crps_max": max(crps),
               "mase": float(np.mean([r["mase"] for r in ok])) if ok else float("nan"),
               "seconds": float(np.mean([r["seconds"] for r in runs])), "seeds": len(ok),
               "diverged": len(runs) - len(ok)}
        if "scale" in runs[0]:
            row["scale"] = runs[0]["scale"]
        if ok:
            po = np.mean([r["crps_per_origin"] for r in ok], axis=0).tolist()  # seed-averaged, per origin
            per_origin[label] = po
            row.update(crps_per_origin=po, interval=interval(po))
        out["methods"][label] = row
        print(f"  {name} {label}: CRPS {np.mean(crps):.4f} ({min(crps):.4f}..{max(crps):.4f}), "
              f"{len(runs) - len(ok)} of {len(runs)} seeds diverged", flush=True)

    for guidance, sampler, label in (("quantile", "ddpm", "TSDiff-Q"), ("mse", "ddpm", "TSDiff-MS"),
                                     ("quantile", "ddim", f"TSDiff-Q (DDIM {DDIM_STEPS})")):
        s_ = chosen[f"{guidance}-{sampler}"]

        def run_guided(seed, guidance=guidance, sampler=sampler, s_=s_):
            q, sec = tsdiff_forecasts(model, windows, guidance, s_, sampler, DDIM_STEPS, seed, samples)
            return {**scores(truths, q, histories, series.season), "seconds": sec, "scale": s_}
        jobs.append((label, run_guided, f"{guidance}-{sampler}-scale{s_:g}"))

    init = np.stack([B.gaussian_samples(np.array(q), samples) for q in base["SeasonalNaive"]["quantiles"]])
    for refiner in ("ml", "lmc"):
        def run_refine(seed, refiner=refiner):
            t0 = time.perf_counter()
            x = SS.refine(model, windows, init, refiner=refiner, iterations=20, seed=seed)
            sec = (time.perf_counter() - t0) / len(windows) + base["SeasonalNaive"]["seconds"]
            fc = S.forecast_samples(x, windows, H)
            q = np.stack([M.sample_quantiles(s) for s in fc])
            return {**scores(truths, q, histories, series.season), "seconds": sec}
        jobs.append((f"SeasonalNaive + {F.REFINER_LABELS[refiner]}", run_refine, None))
    for seed in seeds:  # fill the cache seed-major, so a run stopped early has whole seeds
        for label, fn, key in jobs:
            cache.get(f"{key or label}-n{samples}-seed{seed}", lambda fn=fn, seed=seed: fn(seed))
    for label, fn, key in jobs:
        sampled(label, fn, key)

    # paired differences by origin: against SeasonalNaive and the better statistical baseline (on the test block)
    best_stat = min(("AutoETS", "AutoARIMA"), key=lambda b: out["methods"][b]["crps"])
    out["best_statistical"] = best_stat
    for m, po in per_origin.items():
        if po is None or m in B.BASELINES:
            continue
        row = out["methods"][m]
        for ref in ("SeasonalNaive", best_stat):
            d = interval(np.array(po) - np.array(per_origin[ref]))
            row[f"vs {ref}"] = {**d, "verdict": verdict(d)}

    if cfg.get("carry_lps") is not None:
        out["lps"] = {**cfg["carry_lps"], "carried": cfg["carry_note"]}
    else:
        def lps():
            n = 100 if quick else SYNTHETIC
            *_, x = SS.synthesize(model, n, seed=0)
            return F.synthesis_scores(series, model.info, x[..., 0].numpy().astype(np.float64))
        out["lps"] = cache.get("lps", lps)
    return out


def tab_seconds(name: str) -> float:
    """Seconds from Forecast to the fan chart with the tab's defaults (after a warm-up run)."""
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    params = F.Params(series=name)
    for _ in range(2):
        t0 = time.perf_counter()
        for item in F.run(params, manager):  # the fan chart: the partial result, before the baselines
            if isinstance(item, F.ForecastResult) or "partial" in (getattr(item, "info", None) or {}):
                seconds = time.perf_counter() - t0
                break
    return seconds


ORDER = ["SeasonalNaive", "AutoETS", "AutoARIMA", "TSDiff-MS", "TSDiff-Q", f"TSDiff-Q (DDIM {DDIM_STEPS})",
         "SeasonalNaive + ML", "SeasonalNaive + LMC"]


def _cell(v: dict, digits: int = 4) -> str:
    f = f"{{:.{digits}f}}"
    if not np.isfinite(v["crps"]):
        return f"diverged ({v.get('diverged', 0)} of {v.get('diverged', 0)} seeds)"
    iv = v.get("interval")
    cell = f.format(v["crps"]) + (f" [{f.format(iv['low'])}, {f.format(iv['high'])}]" if iv else "")
    if v.get("diverged"):
        cell += f", {v['diverged']} of {v['seeds'] + v['diverged']} seeds diverged"
    return cell


def _diff(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {d['verdict']}"


def markdown(results: list[dict], tab: dict, report: dict) -> str:
    cfg = report["config"]
    split_note = "; ".join(f"{r['series']}: validation {', '.join(r['validation_origins'])} ({r['validation_block']}), "
                           f"test {', '.join(r['test_origins'])}" for r in results)
    lines = ["# Forecast benchmark (TSDiff vs statsforecast)", "",
             f"Machine: {report['machine']}; run {report['date']}. "
             f"**Selection / report split**: the 5 horizons after each model's training split are cut into a "
             f"*validation block* (the first {VAL_ORIGINS} horizons: every guidance scale is chosen there) and a *test "
             f"block* (the last 3: every figure below is reported there); no training window covers either. "
             f"{split_note}. {cfg['samples']} samples per forecast, sampled methods averaged over {len(cfg['seeds'])} "
             f"seeds ({', '.join(map(str, cfg['seeds']))}), validation {cfg['val_samples']} samples, seed 0"
             + (" (**scaled down** from 100 samples x 3 seeds, validation 50 samples, to fit the compute budget of "
                "this run)" if cfg["samples"] < SAMPLES or len(cfg["seeds"]) < len(SEEDS) else "") +
             ". CRPS = mean weighted quantile loss over q = 0.1..0.9 (GluonTS mean_wQuantileLoss), per origin, "
             "averaged over seeds then over the 3 test origins; **[ ]** = 95% bootstrap interval over the test origins "
             "(with 3 origins it is wide; read it as a floor on the uncertainty). MASE of the median. Lower is better. "
             "These are *our* small statsmodels series, not the paper's datasets.", ""]
    header = "| method | " + " | ".join(r["series"] for r in results) + " |"
    lines += ["## CRPS on the test block (mean wQL, 95% interval)", "", header, "|---|" + "---|" * len(results)]
    for m in ORDER:
        cells = []
        for r in results:
            v = r["methods"].get(m)
            if v is None:
                cells.append("")
                continue
            best = min(x["crps"] for x in r["methods"].values() if np.isfinite(x["crps"]))
            cells.append(f"**{_cell(v)}**" if v["crps"] == best else _cell(v))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Spread over seeds (min..max of the seed means): " + "; ".join(
        f"{r['series']} " + ", ".join(f"{m} {r['methods'][m]['crps_min']:.4f}..{r['methods'][m]['crps_max']:.4f}"
                                      for m in ORDER if r["methods"].get(m, {}).get("seeds", 1) > 1)
        for r in results) + ".", ""]
    lines += ["## Paired differences on the test block (CRPS, method minus reference, by origin)", "",
              "95% bootstrap interval over the 3 test origins; an interval that covers zero is **no difference**. "
              "The statistical reference is the better of AutoETS / AutoARIMA on the test block (the harder one to "
              "beat).", "", "| method | reference | " + " | ".join(r["series"] for r in results) + " |",
              "|---|---|" + "---|" * len(results)]
    for m in ORDER[3:]:
        for ref in ("SeasonalNaive", "best statistical"):
            cells = []
            for r in results:
                v = r["methods"].get(m, {})
                key = f"vs {'SeasonalNaive' if ref == 'SeasonalNaive' else r['best_statistical']}"
                cells.append(_diff(v[key]) + ("" if ref == "SeasonalNaive" else f" (vs {r['best_statistical']})")
                             if key in v else "")
            lines.append(f"| {m} | {ref} | " + " | ".join(cells) + " |")
    lines += ["", "## MASE (median) on the test block", "", header, "|---|" + "---|" * len(results)]
    for m in ORDER:
        lines.append(f"| {m} | " + " | ".join(f"{r['methods'][m]['mase']:.3f}" if m in r["methods"] else ""
                                              for r in results) + " |")
    lines += ["", "## Seconds per forecast", "", "Each point's seconds are those of the run that computed it (finished "
              "points are cached, with their time). statsforecast fits are single-threaded; TSDiff's test origins run "
              f"as one batch and the time is divided by their number ({cfg['threads']} torch thread"
              f"{'s' if cfg['threads'] > 1 else ''}, with other jobs on the machine).", "", header,
              "|---|" + "---|" * len(results)]
    for m in ORDER:
        lines.append(f"| {m} | " + " | ".join(f"{r['methods'][m]['seconds']:.2f}" if m in r["methods"] else ""
                                              for r in results) + " |")
    grid = sorted({float(k) for r in results for sw in r["scale_sweep_validation"].values() for k in sw})
    lines += ["", "## Guidance scale: the validation sweeps (CRPS on the validation block) and the choice", "",
              f"Each sweep starts on {', '.join(f'{s:g}' for s in SCALES['quantile'])} (MS: "
              f"{', '.join(f'{s:g}' for s in SCALES['mse'])}), {cfg['val_samples']} samples, seed 0, and extends by "
              f"factors of 2 past an edge that holds its best, until it turns over, the next scale diverges or it "
              f"reaches {SCALE_LIMITS[0]:g} / {SCALE_LIMITS[1]:g} (*end*). The chosen scale is the best one that stays "
              f"finite when the validation block is sampled at the test's protocol ({cfg['samples']} samples, every "
              f"seed); *struck* lists the better scales that diverged there (diverged trajectories / all, per seed "
              f"run).", "",
              "| series | sweep | " + " | ".join(f"s = {s:g}" for s in grid) + " | end | struck | chosen |",
              "|---|---|" + "---|" * len(grid) + "---|---|---|"]
    for r in results:
        for tag, sw in r["scale_sweep_validation"].items():
            vals = {float(k): v for k, v in sw.items()}
            cells = [("diverged" if not np.isfinite(vals[s]) else f"{vals[s]:.4f}") if s in vals else "-"
                     for s in grid]
            struck = ", ".join(f"{float(k):g} ({'+'.join(map(str, c['diverged_trajectories']))} / {c['of']})"
                               for k, c in r.get("scale_stability_check", {}).get(tag, {}).items()
                               if not c["stable"]) or "-"
            lines.append(f"| {r['series']} | {tag} | " + " | ".join(cells) +
                         f" | {r.get('scale_sweep_end', {}).get(tag, '')} | {struck} | {r['scale'][tag]:g} |")
    lines += ["", "## Set-up", "", "| series | points | freq | season | context | horizon | lags | train split | "
              "validation block | test block | tau |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['series']} | {r['n']} | {r['freq']} | {r['season']} | {r['context']} | {r['horizon']} | "
                     f"{r['lags']} | first {r['train_end']} | {', '.join(r['validation_origins'])} "
                     f"({r['validation_block']}) | {', '.join(r['test_origins'])} | {r['tau']} |")
    lines += ["", "## Linear Predictive Score (ridge on synthetic vs on real training windows; CRPS on held-out "
              "real windows)", ""]
    carried = {r["lps"].get("carried") for r in results} - {None}
    if carried:
        lines += [f"Not re-run here: {', '.join(sorted(carried))}.", ""]
    lines += ["| series | synthetic (500 DDPM windows) | real training windows | held-out windows |", "|---|---|---|---|"]
    for r in results:
        lp = r["lps"]
        lines.append(f"| {r['series']} | {lp['synthetic']:.4f} | {lp['real']:.4f} | {lp['test_windows']} |")
    stale = report.get("not_measured") or {}
    if stale:
        lines += ["", "## Not re-measured in this run", "",
                  f"{', '.join(stale)}: no CPU time was left for them before this run's deadline; their figures below "
                  "are the previous results file's, under the **old protocol** (all 5 held-out horizons, guidance "
                  "scale chosen on the last two horizons of the training split, 100 samples x 3 seeds), so they are "
                  "not comparable with the tables above and are left out of the goals.", "",
                  "| method | " + " | ".join(stale) + " |", "|---|" + "---|" * len(stale)]
        for m in ORDER:
            lines.append(f"| {m} | " + " | ".join(f"{v['methods'][m]['crps']:.4f}" if m in v["methods"] else ""
                                                  for v in stale.values()) + " |")
        lines.append("| scale Q / MS / Q (DDIM) | " + " | ".join(
            f"{v['scale']['quantile-ddpm']:g} / {v['scale']['mse-ddpm']:g} / {v['scale']['quantile-ddim']:g}"
            for v in stale.values()) + " |")
    lines += ["", "## Goals", ""]
    goals = evaluate_goals(results, tab, report.get("tab_note"))
    lines += [f"- {g}" for g in goals["lines"]]
    lines += ["", "Context, the paper's CRPS (their datasets): TSDiff-Q 0.049 vs Seasonal Naive 0.069 on "
              "Electricity, 0.098 vs 0.221 on Traffic; refinement of Seasonal Naive on Traffic 0.221 -> 0.126."]
    return "\n".join(lines) + "\n"


def evaluate_goals(results: list[dict], tab: dict, tab_note: str | None = None) -> dict:
    """Each goal counts a series only where the paired 95% interval excludes zero ("lower")."""
    def lower(r, m, ref):
        return r["methods"].get(m, {}).get(f"vs {ref}", {}).get("verdict") == "lower"

    def listing(v):
        return ", ".join(v) or "none"

    q_beats_sn = [r["series"] for r in results if lower(r, "TSDiff-Q", "SeasonalNaive")]
    q_beats_best = [r["series"] for r in results if lower(r, "TSDiff-Q", r["best_statistical"])]
    point_sn = [r["series"] for r in results if r["methods"]["TSDiff-Q"]["crps"] < r["methods"]["SeasonalNaive"]["crps"]]
    refined = {k: [r["series"] for r in results if lower(r, f"SeasonalNaive + {k}", "SeasonalNaive")] for k in ("ML", "LMC")}
    refined_pt = {k: [r["series"] for r in results if r["methods"][f"SeasonalNaive + {k}"]["crps"] <
                      r["methods"]["SeasonalNaive"]["crps"]] for k in ("ML", "LMC")}
    n = len(results)
    lines = [
        f"TSDiff-Q beats SeasonalNaive on every series (paired interval below zero): "
        f"{'MET' if len(q_beats_sn) == n else 'MISSED'} ({len(q_beats_sn)}/{n}: {listing(q_beats_sn)}; lower point "
        f"estimate on {len(point_sn)}/{n}: {listing(point_sn)})",
        f"TSDiff-Q beats the better of AutoETS/AutoARIMA on at least half (paired interval below zero): "
        f"{'MET' if 2 * len(q_beats_best) >= n else 'MISSED'} ({len(q_beats_best)}/{n}: {listing(q_beats_best)})",
        *[f"Refinement ({k}) lowers SeasonalNaive's CRPS on most series (paired interval below zero): "
          f"{'MET' if 2 * len(v) > n else 'MISSED'} ({len(v)}/{n}: {listing(v)}; lower point estimate on "
          f"{len(refined_pt[k])}/{n}: {listing(refined_pt[k])})" for k, v in refined.items()],
        "Forecast renders in the tab in under 5 s: " + ("MET" if tab and max(tab.values()) < 5 else "MISSED") +
        " (" + ", ".join(f"{k} {v:.1f} s" for k, v in tab.items()) + f"; the tab's defaults: TSDiff-Q, DDIM "
        f"{F.Params().ddim_steps} steps, {F.Params().samples} samples; Forecast pressed to the fan-chart result, "
        f"in-process, after one warm-up run" + (f"; {tab_note}" if tab_note else "") + ")",
    ]
    return {"lines": lines, "q_beats_seasonal_naive": q_beats_sn, "q_beats_best_stat": q_beats_best,
            "refinement_helps": refined}


# --- quality per second: the tab's sampler and steps (issue 29, part 2) ------------------------------------

STEP_GRID = {"ddim": (5, 8, 10, 15, 20, 25), "ddpm": (100,)}  # DDPM: the official sampler, all 100 steps (context)
STEPS_SEEDS = (0, 1)
# The rule, fixed here before the sweep was drawn. Items: the forecast origins of all four series, the validation
# blocks (2 origins each) for selection and the test blocks (3 each) for the report (they chose nothing). At each
# origin, CRPS (mean wQL, the tab's 100 samples, averaged over STEPS_SEEDS) relative to the tab's default at the
# same origin and seeds: CRPS / CRPS_default - 1. A setting passes where the mean over origins of that relative
# difference has its upper 95% end (bootstrap over origins) at or below +CRPS_MARGIN (5% worse at most, shown) and no
# trajectory diverged; it is admitted only where every larger step count of its sampler passes too; the admitted
# setting with the fewest network evaluations is checked on the test origins by the same margin.
CRPS_MARGIN = 0.05


def relative_interval(rel: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    boots = [float(np.mean(rel[rng.integers(0, len(rel), len(rel))])) for _ in range(n_boot)]
    return {"value": float(np.mean(rel)), "low": float(np.quantile(boots, 0.025)),
            "high": float(np.quantile(boots, 0.975))}


def steps_point(name: str, block: str, sampler: str, steps: int) -> dict:
    """CRPS per origin of ``block`` ("validation" / "test") of series ``name`` with the tab's defaults at
    ``sampler`` / ``steps`` (cached, keyed by the model's weights), with seconds per forecast."""
    series = S.bundled(name)
    key = F.model_key(name)
    sha = read_manifest()[key]["files"]["model/diffusion_pytorch_model.safetensors"]["sha256"][:12]
    p = F.Params(series=name)

    def fn():
        model = load_zoo(key)
        H, L, lags = series.horizon, int(model.info["window"]), tuple(model.info["lags"])
        val, test, _ = split(series, H)
        pos = val if block == "validation" else test
        windows = [S.make_window(series.values, o, L, H, lags) for o in pos]
        truths, hist = [series.values[o:o + H] for o in pos], [series.values[:o] for o in pos]
        crps, seconds, diverged = [], 0.0, 0
        for seed in STEPS_SEEDS:
            t0 = time.perf_counter()
            *_, x = SS.observation_guidance(model, windows, num_samples=p.samples, guidance=p.guidance, scale=p.scale,
                                           sampler=sampler, steps=steps, seed=seed)
            seconds += (time.perf_counter() - t0) / len(windows)
            bad = (~torch.isfinite(x)).flatten(2).any(-1)
            diverged += int(bad.sum())
            fc = S.forecast_samples(torch.nan_to_num(x), windows, H)
            q = np.stack([M.sample_quantiles(f) for f in fc])
            crps.append(scores(truths, q, hist, series.season)["crps_per_origin"])
        return {"crps_per_origin": np.mean(crps, 0).tolist(), "diverged": diverged,
                "seconds_per_forecast": round(seconds / len(STEPS_SEEDS), 3)}

    return Cache(f"steps-{key}-{sha}").get(f"{block}-{sampler}-{steps}-n{p.samples}-s{p.scale:g}", fn)


def steps_rows(block: str, default: tuple) -> list[dict]:
    rows = []
    base = {n: steps_point(n, block, *default) for n in S.BUNDLED}
    for sampler, grid in STEP_GRID.items():
        for steps in grid:
            pts = {n: steps_point(n, block, sampler, steps) for n in S.BUNDLED}
            rel = np.concatenate([np.array(pts[n]["crps_per_origin"]) / np.array(base[n]["crps_per_origin"]) - 1
                                  for n in S.BUNDLED])
            d = relative_interval(rel)
            diverged = sum(p["diverged"] for p in pts.values())
            rows.append({"sampler": sampler, "steps": steps, "relative_crps": d, "diverged": diverged,
                         "crps": {n: float(np.mean(p["crps_per_origin"])) for n, p in pts.items()},
                         "seconds_per_forecast": float(np.mean([p["seconds_per_forecast"] for p in pts.values()])),
                         "passes": bool(d["high"] <= CRPS_MARGIN and not diverged)})
    return rows


def fewer_steps(threads: int = THREADS) -> dict:
    """The Forecast tab's default sampler and steps against :data:`STEP_GRID` (the rule above); writes
    ``results/forecast_steps.json`` and ``.md``."""
    torch.set_num_threads(threads)
    p = F.Params()
    default = (p.sampler, p.ddim_steps if p.sampler == "ddim" else 100)
    rows = steps_rows("validation", default)
    allowed = admitted_steps(rows)
    for r in rows:
        r["admitted"] = r in allowed
    ok = [r for r in rows if r["admitted"] and (r["sampler"], r["steps"]) != default]
    chosen = min(ok, key=lambda r: (r["steps"], r["relative_crps"]["value"])) if ok else None
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "default": {"sampler": default[0], "steps": default[1]}, "scale": p.scale, "guidance": p.guidance,
           "samples": p.samples, "seeds": list(STEPS_SEEDS), "margin": CRPS_MARGIN, "threads": threads,
           "selection": rows, "chosen": None if chosen is None else {"sampler": chosen["sampler"],
                                                                     "steps": chosen["steps"]}}
    if chosen is not None:
        test = {(r["sampler"], r["steps"]): r for r in steps_rows("test", default)}
        c = test[(chosen["sampler"], chosen["steps"])]
        out["report"] = {"chosen": c, "default": test[default], "holds": c["passes"], "all": list(test.values())}
    (ROOT / "results" / "forecast_steps.json").write_text(json.dumps(out, indent=1) + "\n")
    (ROOT / "results" / "forecast_steps.md").write_text(steps_markdown(out))
    print(steps_markdown(out))
    return out


def steps_markdown(r: dict) -> str:
    d = r["default"]
    names = list(S.BUNDLED)
    head = ("| sampler | steps | " + " | ".join(f"CRPS {n}" for n in names)
            + " | CRPS / default - 1 (mean over origins) [95%] | diverged | s per forecast | passes | admitted |")
    lines = [f"# Forecast: quality per second of the tab's sampler ({r['date']})", "",
             f"Machine: {r['machine']}. TSDiff-Q at the tab's defaults ({r['guidance']} guidance, scale {r['scale']:g}, "
             f"{r['samples']} samples) on the four bundled series' zoo models, seeds {r['seeds']} averaged per origin. "
             f"Default: {d['sampler'].upper()} {d['steps']}. Selection items: each series' validation origins (2 "
             "each, 8 in all); report items: the test origins (3 each, 12; they chose nothing), as in "
             "benchmarks/results/forecast.md.", "",
             f"Rule (fixed before the sweep): per origin, CRPS over the default's at the same origin minus 1; a "
             f"setting passes where the mean's upper 95% end (bootstrap over origins) is at most +{r['margin']:g} "
             "and no trajectory diverged; admitted where every larger step count of its sampler passes too; the "
             "admitted setting with the fewest steps is checked on the test origins by the same margin. Seconds: "
             f"the TSDiff sampler per forecast ({r['threads']} threads, origins batched).", "",
             "Selection (validation origins):", "", head, "|" + "---|" * (len(names) + 7)]

    def line(row, flags=True):
        cells = " | ".join(f"{row['crps'][n]:.4f}" for n in names)
        e = row["relative_crps"]
        tail = f" | {'yes' if row['passes'] else 'no'} | {'yes' if row.get('admitted') else 'no'} |" if flags else \
            f" | {'yes' if row['passes'] else 'no'} | |"
        return (f"| {row['sampler'].upper()} | {row['steps']} | {cells} | {e['value']:+.3f} [{e['low']:+.3f}, "
                f"{e['high']:+.3f}] | {row['diverged']} | {row['seconds_per_forecast']:.2f}{tail}")

    lines += [line(row) for row in r["selection"]]
    if r["chosen"] is None:
        lines += ["", "No setting is admitted on the validation origins: the default stays."]
    else:
        c, rep = r["chosen"], r["report"]
        lines += ["", f"Chosen on the validation origins: **{c['sampler'].upper()} {c['steps']}**. Test origins "
                  "(every setting, for the curve; only the chosen one is judged):", "", head,
                  "|" + "---|" * (len(names) + 7)]
        lines += [line(row, flags=False) for row in rep["all"]]
        lines += ["", f"The margin **{'holds' if rep['holds'] else 'does not hold'}** on the test origins -> "
                  f"{'adopt' if rep['holds'] else 'the default stays'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 100 synthetic windows (a smoke run)")
    ap.add_argument("--series", nargs="*", default=list(S.BUNDLED))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 when running two benches at once)")
    ap.add_argument("--samples", type=int, default=SAMPLES, help="samples per test forecast")
    ap.add_argument("--val-samples", type=int, default=VAL_SAMPLES, help="samples per validation forecast")
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="how many seeds per sampled method")
    ap.add_argument("--carry-lps", action="store_true", help="keep the LPS figures of the previous results file")
    ap.add_argument("--carry-tab", action="store_true", help="keep the tab seconds of the previous results file")
    ap.add_argument("--no-report", action="store_true", help="only fill the cache (no results files)")
    ap.add_argument("--not-measured", nargs="*", default=[],
                    help="series left out of this run: the report shows the previous file's figures, labelled old")
    ap.add_argument("--fewer-steps", action="store_true",
                    help="only the tab's sampler and steps by quality per second (results/forecast_steps.md)")
    args = ap.parse_args()
    if args.fewer_steps:
        fewer_steps(args.threads)
        return
    torch.set_num_threads(args.threads)
    out = ROOT / "results"
    suffix = "_quick" if args.quick else ""
    previous = json.loads((out / f"forecast{suffix}.json").read_text()) if (out / f"forecast{suffix}.json").exists() \
        else {}
    prev_note = f"carried from the results of {previous.get('date', 'the 2026-11-26 run')} (same model weights)"
    prev_series = {r["series"]: r for r in previous.get("series", [])}
    seeds = list(SEEDS[:1] if args.quick else SEEDS[:args.seeds])
    cfg = {"samples": args.samples, "val_samples": args.val_samples, "seeds": seeds, "threads": args.threads}
    results = []
    for name in args.series:
        print(f"== {name}", flush=True)
        lps = prev_series.get(name, {}).get("lps") if args.carry_lps else None
        if lps is not None:
            lps = {k: v for k, v in lps.items() if k != "carried"}
            prev = prev_series[name]["lps"].get("carried")
        results.append(bench_series(name, args.quick, {**cfg, "carry_lps": lps,
                                                       "carry_note": (prev or prev_note) if lps else None}))
    if args.no_report:
        return
    if args.carry_tab and previous.get("tab_seconds"):
        tab = {k: v for k, v in previous["tab_seconds"].items() if k in args.series}
        tab_note = previous.get("tab_note") or f"tab seconds {prev_note}, 2 threads"
    else:
        tab = {name: round(tab_seconds(name), 2) for name in args.series}
        tab_note = f"measured in this run, {args.threads} thread{'s' if args.threads > 1 else ''}"
    report = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "config": cfg,
              "seeds": seeds, "samples": args.samples, "validation_origins": VAL_ORIGINS,
              "scales": {k: list(v) for k, v in SCALES.items()}, "scale_limits": list(SCALE_LIMITS), "series": results, "tab_seconds": tab,
              "tab_note": tab_note, "goals": evaluate_goals(results, tab, tab_note),
              "not_measured": {k: {**prev_series[k], "protocol": "old"} for k in args.not_measured if k in prev_series}}
    out.mkdir(exist_ok=True)
    (out / f"forecast{suffix}.json").write_text(json.dumps(report, indent=1))
    (out / f"forecast{suffix}.md").write_text(markdown(results, tab, report))
    print(markdown(results, tab, report))


if __name__ == "__main__":
    main()
