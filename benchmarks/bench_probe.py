"""Probe benchmark: where in ``digits-cond`` and at which noise level its features read digits best
(DDAE's linear-probe grid, FutureXiang/ddae ``linear.py --grid``; the tap is :mod:`studio.core.features`,
the heads and splits are the ``probe-digits`` recipe's, :mod:`studio.train.probe`).

**Splits.** Fit: 80 % of the 1,437 training digits (stratified, random_state 0); validation: the other
20 %; report: the 360 test digits. Every head's L2 strength, the shipped (block, t) and the supervised
network's stopping step are chosen on validation; the test digits choose nothing.

Measured on the 360 test digits, each accuracy with a 95 % bootstrap interval (1000 resamples):

* the full block x t grid of test accuracy (each cell's head and C as the recipe fits them);
* the best cell on validation (the shipped probe, also read through the zoo entry to check it agrees);
* **raw pixels**: the same head (standardised, logistic regression, C on validation) on the 256 pixels, with the
  same shifted copies of the fit digits (no noise: pixels are the clean image);
* **a same-size network trained supervised**: ``digits-cond``'s own architecture (UNet2DModel, same
  config, 1.05 M parameters), from scratch, fed the clean digit at t = 0 with the null class, GAP of its
  last decoder block + a linear head, trained end to end with cross-entropy on the fit digits (1-pixel
  random shifts, AdamW lr 1e-3, batch 64), stopped at the step with the best validation accuracy;
* **guide-clean**: the zoo's supervised digits classifier (Guide's; 0.69 M parameters, trained on all
  1,437 training digits, so it saw 20 % more digits than the heads here).

Paired differences (same test digits, resampled together) decide: an interval covering 0 is "no
difference". The papers' figures (DDAE CIFAR-10 linear probe 95.9 %) are context only.

Writes ``benchmarks/results/probe.json`` and ``probe.md``. Run: ``python benchmarks/bench_probe.py``
(features cached in ``runs/probe-digits`` by ``studio train probe-digits``; ``--steps`` caps the
supervised network's training).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.core.metrics import bootstrap_mean  # noqa: E402
from studio.data import digits  # noqa: E402
from studio.train import probe  # noqa: E402
from studio.train.common import machine_description, random_shift  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
SUPERVISED_SEED = 31


def est(hits) -> dict:
    return bootstrap_mean(np.asarray(hits, dtype=float)).to_dict()


def fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def hits_of(head, mean, std, x, y) -> np.ndarray:
    with torch.no_grad():
        return (head((x - mean) / std).argmax(-1) == y).numpy()


def pixel_baseline(fit_idx, val_idx, fit_y, val_y, test_y) -> dict:
    train, test = digits.load("train"), digits.load("test")
    x_fit = torch.from_numpy(train.images[fit_idx])
    fit_x = torch.stack([c.flatten(1) for c in probe.shifted_copies(x_fit)])
    val_x = torch.from_numpy(train.images[val_idx]).flatten(1)
    cell = probe.fit_cell(fit_x, fit_y, val_x, val_y)
    hits = hits_of(cell["head"], cell["mean"], cell["std"], torch.from_numpy(test.images).flatten(1), test_y)
    return {"validation": round(cell["val"], 4), "C": cell["C"], "hits": hits}


def supervised_unet(fit_idx, val_idx, fit_y, val_y, test_y, steps: int, every: int = 50) -> dict:
    """``digits-cond``'s architecture from scratch, trained supervised; stopped on validation."""
    from diffusers import UNet2DModel

    from studio.core.features import block_channels, decoder_blocks, hooked
    from studio.core.loading import ZOO_DIR

    cfg = json.loads((ZOO_DIR / probe.BASE / "model" / "config.json").read_text())
    torch.manual_seed(SUPERVISED_SEED)
    unet = UNet2DModel.from_config(cfg)
    block = list(decoder_blocks(unet))[-1]
    head = torch.nn.Linear(block_channels(unet)[block], 10)
    params = list(unet.parameters()) + list(head.parameters())
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SUPERVISED_SEED)
    train, test = digits.load("train"), digits.load("test")
    x_fit = torch.from_numpy(train.images[fit_idx])
    x_val, x_test = torch.from_numpy(train.images[val_idx]), torch.from_numpy(test.images)
    null = 10

    def logits(x):
        with hooked(unet, [block]) as acts:
            unet(x, torch.zeros(len(x), dtype=torch.long), class_labels=torch.full((len(x),), null))
        return head(acts[block])

    @torch.no_grad()
    def predict(x):
        unet.eval()
        out = torch.cat([logits(x[s:s + 180]).argmax(-1) for s in range(0, len(x), 180)])
        unet.train()
        return out

    best = {"val": -1.0}
    curve = []
    t0 = time.perf_counter()
    unet.train()
    for step in range(1, steps + 1):
        i = torch.randint(len(fit_y), (64,), generator=gen)
        loss = F.cross_entropy(logits(random_shift(x_fit[i], gen, 1)), fit_y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0:
            val = float((predict(x_val) == val_y).float().mean())
            curve.append({"step": step, "validation": round(val, 4), "loss": round(float(loss.detach()), 4)})
            print(f"supervised step {step}: validation {val:.3f}", flush=True)
            if val > best["val"]:
                best = {"val": val, "step": step, "hits": (predict(x_test) == test_y).numpy()}
    return {"validation": round(best["val"], 4), "step": best["step"], "hits": best["hits"], "curve": curve,
            "params": n_params, "block": block, "seconds": round(time.perf_counter() - t0, 1), "steps": steps}


def guide_clean(test_y) -> dict:
    from studio.core.loading import load_zoo

    net = load_zoo("guide-clean")
    with torch.no_grad():
        pred = net(torch.from_numpy(digits.load("test").images)).argmax(-1)
    return {"hits": (pred == test_y).numpy(), "params": sum(p.numel() for p in net.parameters())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600, help="supervised network: training steps (batch 64)")
    ap.add_argument("--rewrite", action="store_true", help="only rewrite probe.md from probe.json")
    args = ap.parse_args(argv)
    if args.rewrite:
        r = json.loads((OUT / "probe.json").read_text())
        write(r)
        return r
    t_start = time.perf_counter()
    fit_idx, val_idx = probe.fit_val_split()
    fit_y, val_y, test_y = probe.labels()

    cells = probe.grid()
    blocks = probe.blocks_of(cells)
    best_block, best_t = probe.best_cell(cells)
    test_hits = {}
    for (b, t), c in cells.items():
        test_hits[(b, t)] = hits_of(c["head"], c["mean"], c["std"], probe.features_at(t)["test"][b], test_y)
    grid_test = [[round(float(test_hits[(b, t)].mean()), 4) for t in probe.GRID] for b in blocks]
    grid_val = [[round(cells[(b, t)]["val"], 4) for t in probe.GRID] for b in blocks]

    from studio.core.loading import load_zoo

    shipped = load_zoo(probe.NAME)
    with torch.no_grad():
        zoo_hits = (shipped(torch.from_numpy(digits.load("test").images)).argmax(-1) == test_y).numpy()
    shipped_cell = {"block": shipped.block, "t": shipped.t}

    top_val = sorted(cells, key=lambda k: -cells[k]["val"])[:3]
    top_test = max(cells, key=lambda k: test_hits[k].mean())
    pix = pixel_baseline(fit_idx, val_idx, fit_y, val_y, test_y)
    sup = supervised_unet(fit_idx, val_idx, fit_y, val_y, test_y, args.steps)
    guide = guide_clean(test_y)

    best_hits = test_hits[(best_block, best_t)]
    rows = {"probe (best on validation)": best_hits, "raw pixels": pix["hits"],
            "same-size UNet, supervised": sup["hits"], "guide-clean": guide["hits"]}
    paired = {f"probe - {k}": est(best_hits.astype(float) - v.astype(float)) for k, v in rows.items()
              if k != "probe (best on validation)"}
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine_description(),
        "splits": {"fit": len(fit_idx), "validation": len(val_idx), "test": len(test_y),
                   "rule": "fit/validation = training digits 80/20 stratified random_state 0; test chooses nothing"},
        "grid": {"blocks": blocks, "timesteps": list(probe.GRID), "validation_accuracy": grid_val,
                 "test_accuracy": grid_test,
                 "C": [[cells[(b, t)]["C"] for t in probe.GRID] for b in blocks]},
        "best_on_validation": {"block": best_block, "t": best_t, "validation": round(cells[(best_block, best_t)]["val"], 4),
                               "C": cells[(best_block, best_t)]["C"], "test": est(best_hits)},
        "shipped_probe": {**shipped_cell, "test_via_zoo_entry": est(zoo_hits),
                          "agrees_with_grid": bool((zoo_hits == best_hits).all())},
        "top_validation_cells": [{"block": b, "t": t, "validation": round(cells[(b, t)]["val"], 4),
                                  "test": est(test_hits[(b, t)])} for b, t in top_val],
        "best_on_test_context_only": {"block": top_test[0], "t": top_test[1], "test": est(test_hits[top_test])},
        "baselines": {
            "raw pixels": {"validation": pix["validation"], "C": pix["C"], "test": est(pix["hits"])},
            "same-size UNet, supervised": {"validation": sup["validation"], "step": sup["step"], "steps": sup["steps"],
                                           "params": sup["params"], "block": sup["block"], "seconds": sup["seconds"],
                                           "curve": sup["curve"], "test": est(sup["hits"])},
            "guide-clean": {"params": guide["params"], "test": est(guide["hits"])},
        },
        "paired_differences": paired,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write(result)
    return result


def write(r: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "probe.json").write_text(json.dumps(r, indent=2) + "\n")
    g = r["grid"]
    b = r["best_on_validation"]
    lines = [
        f"# Probe benchmark: linear probes on `digits-cond`'s decoder features ({r['machine']}, {r['date']})",
        "",
        "DDAE's recipe (forward hooks on every decoder block, GAP, a linear head; deviation: the head is a "
        "multinomial logistic regression fit to convergence, L2 chosen on validation, where DDAE runs Adam for "
        "15 epochs), null-class condition, t = diffusers' 0-based index (DDAE's t = 1, 11, 21 are 0, 10, 20). "
        f"Splits: fit {r['splits']['fit']} and validation {r['splits']['validation']} training digits (80/20, "
        f"stratified, random_state 0); report: the {r['splits']['test']} test digits, which choose nothing. "
        "Intervals: 95 % bootstrap over test digits (1000 resamples). Toy scale: DDAE's CIFAR-10 linear probe "
        "(95.9 %) is context, not comparable.",
        "",
        f"**Selection set** (chooses the cell, each head's C and the supervised network's stopping step): the "
        f"{r['splits']['validation']} validation digits held out of the training split. **Report set**: the "
        f"{r['splits']['test']} test digits.",
        "",
        "## Validation accuracy (chooses the cell; each cell's L2 strength C chosen on validation too)",
        "",
        "| block \\ t | " + " | ".join(str(t) for t in g["timesteps"]) + " |",
        "|---|" + "---|" * len(g["timesteps"]),
    ]
    for name, row in zip(g["blocks"], g["validation_accuracy"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", "## Test accuracy, the full grid (reported, never chosen on)", "",
              "| block \\ t | " + " | ".join(str(t) for t in g["timesteps"]) + " |",
              "|---|" + "---|" * len(g["timesteps"])]
    for name, row in zip(g["blocks"], g["test_accuracy"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", f"**Best on validation: block {b['block']}, t = {b['t']}** (validation {b['validation']:.3f}, "
              f"C = {b['C']}; ties go to the earlier block, then the lower t): test **{fmt(b['test'])}**. The shipped `probe-digits` read through the zoo "
              f"loader: {fmt(r['shipped_probe']['test_via_zoo_entry'])} "
              f"({'the same predictions' if r['shipped_probe']['agrees_with_grid'] else 'DIFFERENT predictions'}).",
              "", "Top cells on validation:", ""]
    for c in r["top_validation_cells"]:
        lines.append(f"- {c['block']}, t = {c['t']}: validation {c['validation']:.3f}, test {fmt(c['test'])}")
    o = r["best_on_test_context_only"]
    lines += [f"- (context only, chosen on test: {o['block']}, t = {o['t']}: {fmt(o['test'])})", "",
              "## Against baselines (same 360 test digits)", "",
              "| reader | test accuracy | chosen on validation | parameters trained here |", "|---|---|---|---|",
              f"| probe {b['block']}, t = {b['t']} | {fmt(b['test'])} | cell and C = {b['C']} | a linear head |"]
    bl = r["baselines"]
    lines += [f"| raw pixels, same head | {fmt(bl['raw pixels']['test'])} | C = {bl['raw pixels']['C']} | a linear head (256 -> 10) |",
              f"| same-size UNet (digits-cond's config) trained supervised, GAP of {bl['same-size UNet, supervised']['block']} + linear | "
              f"{fmt(bl['same-size UNet, supervised']['test'])} | step {bl['same-size UNet, supervised']['step']} of "
              f"{bl['same-size UNet, supervised']['steps']} (batch 64) | {bl['same-size UNet, supervised']['params']:,} |",
              f"| guide-clean (zoo; all 1,437 training digits) | {fmt(bl['guide-clean']['test'])} | (its recipe) | "
              f"{bl['guide-clean']['params']:,} |", "",
              f"The supervised UNet's validation accuracy every 50 steps is in probe.json (best at step "
              f"{bl['same-size UNet, supervised']['step']}; it took {bl['same-size UNet, supervised']['seconds']} s). "
              "guide-clean was trained on all 1,437 training digits, the heads and the supervised UNet on the "
              "1,149 fit digits.", "", "Paired differences (interval covering 0: no difference):", ""]
    for k, v in r["paired_differences"].items():
        verdict = "no difference" if v["low"] <= 0 <= v["high"] else ("probe better" if v["value"] > 0 else "probe worse")
        lines.append(f"- {k}: {v['value']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]: {verdict}")
    lines += ["", f"Run: `python benchmarks/bench_probe.py` ({r['seconds']} s on one thread, features cached by "
              "`studio train probe-digits`).", ""]
    (OUT / "probe.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
