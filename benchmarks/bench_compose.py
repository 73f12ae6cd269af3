"""Compose benchmark: Composable Diffusion vs the single joined caption vs CFG, NOT vs negative_prompt.

All on the embedded ``shapes-t2i`` model, graded by the shapes judge (``judge-shapes``, trained apart
from the diffusion model). Concepts are full captions "a <colour> <shape> at the <region>".

Held-out sets: ``shapes.HELD_OUT_PAIRS`` pairs every (shape, colour) kind with a partner that never
shares a training image with it (the recipe redraws such scenes). k = 2 composes one such pair in
two random regions; k = 3 adds a third random object in a third region, so every k >= 2 set
holds a combination no training image showed. k = 1 is every single object (kind x region).

Measured, each with a 95% bootstrap interval (image i uses seed 5000 + i, the same for every method):

1. all-satisfied accuracy (the paper's metric: every concept present as asked, region included)
   for compose AND (weight w per concept), the joined caption "A and B and C" (CFG at w) and, at
   k = 1, plain CFG (at k = 1 the three are the same computation);
2. NOT success: the positive concept present and the negated one absent anywhere, for compose-NOT
   (``eps_u + w (eps_pos - eps_neg)``), diffusers' ``negative_prompt`` (``eps_neg + w (eps_pos -
   eps_neg)``) and the positive concept alone (the base rate);
3. all-satisfied at k = 2 against w, for compose and the joined caption (plotted with plotly);
4. seconds per image at k = 3: batched evaluation (one forward pass of 4B) vs one pass per
   condition over the batch, and vs the official pipeline's way (one image per run, one pass of
   batch 1 per condition), same images.

Writes ``benchmarks/results/compose.json``, ``compose.md`` and ``compose_weights.html``.
Run: ``python benchmarks/bench_compose.py [--quick]`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import guidance as G
from studio.core import metrics
from studio.core.conditioning import text_conditions
from studio.core.manager import ModelManager
from studio.core.sampling import make_scheduler, run_to_end, sample_images
from studio.data import shapes
from studio.nets.judges import concept_present
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
SEED = 5000
STEPS = 20
WEIGHT = 2.0
SWEEP = (1.0, 1.5, 2.0, 3.0, 4.0)
MAX_TOKENS = 64  # joined captions are longer than single ones; padding does not change results
CHUNK = 60


def concept(shape, colour, region) -> dict:
    return {"shape": shape, "colour": colour, "region": region,
            "prompt": shapes.concept_caption(shape, colour, region)}


def held_out_set(k: int, n: int, seed: int) -> list[list[dict]]:
    """``n`` lists of ``k`` full concepts in distinct regions; for k >= 2 the first two are a held-out pair."""
    rng = np.random.default_rng([seed, k])
    kinds = [(s, c) for s in shapes.SHAPES for c in shapes.COLOURS]
    items = []
    for i in range(n):
        if k == 1:
            kind = kinds[i % len(kinds)]
            chosen = [kind]
        else:
            a, b = shapes.HELD_OUT_PAIRS[i % len(shapes.HELD_OUT_PAIRS)]
            chosen = [a, b] + [kinds[int(j)] for j in rng.integers(len(kinds), size=k - 2)]
        regions = rng.choice(9, size=k, replace=False) if k > 1 else [i // len(kinds) % 9]
        items.append([concept(s, c, int(r)) for (s, c), r in zip(chosen, regions)])
    return items


def not_set(n: int, seed: int) -> list[dict]:
    """Half "a <colour> shape at <region>" NOT "a <colour> <shape>" (shape must change), half
    "a <shape> at <region>" NOT "a <colour> shape" (colour must change)."""
    rng = np.random.default_rng([seed, 99])
    items = []
    for i in range(n):
        s, c = shapes.SHAPES[int(rng.integers(3))], shapes.COLOURS[int(rng.integers(6))]
        r = int(rng.integers(9))
        if i % 2 == 0:
            pos, neg = concept(None, c, r), concept(s, c, None)
        else:
            pos, neg = concept(s, None, r), concept(None, c, None)
        items.append({"pos": pos, "neg": neg})
    return items


class Sampler:
    """Composes batches on one model; prompts are encoded once and cached."""

    def __init__(self, manager: ModelManager, dm):
        self.manager, self.dm, self.cache = manager, dm, {}

    def conds(self, prompts: list[str]) -> dict:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            self.cache.update(zip(missing, text_conditions(self.dm, self.manager, missing, max_tokens=MAX_TOKENS)))
        return G.cat_conds([self.cache[p] for p in prompts])

    @torch.no_grad()
    def images(self, bases: list[str], slots: list[list[str]], weights: list[float], seeds: list[int],
               batched: bool = True) -> torch.Tensor:
        """Image i: base prompt ``bases[i]`` (\"\" = unconditional), concept j = ``slots[j][i]`` at ``weights[j]``."""
        out = []
        for lo in range(0, len(seeds), CHUNK):
            sl = slice(lo, lo + CHUNK)
            denoise = G.combine(self.dm.model_fn, self.conds(bases[sl]), [self.conds(s[sl]) for s in slots],
                                weights, batched=batched)
            sched = make_scheduler("ddim", self.dm.scheduler_config, self.dm.prediction_type)
            out.append(run_to_end(sample_images(self.dm, denoise, sched, seeds[sl], num_inference_steps=STEPS)))
        return torch.cat(out)


def seeds_for(n: int) -> list[int]:
    """Image i of every cell uses seed SEED + i (paired across methods)."""
    return list(range(SEED, SEED + n))


def present(cells, i: int, c: dict) -> bool:
    s, col = cells
    return bool(concept_present(s[i:i + 1], col[i:i + 1], c["shape"], c["colour"], c["region"]))


def all_satisfied(judge, x: torch.Tensor, items: list[list[dict]]) -> np.ndarray:
    cells = judge.read(x.float())
    return np.array([all(present(cells, i, c) for c in item) for i, item in enumerate(items)], dtype=float)


def joined(item: list[dict]) -> str:
    return " and ".join(c["prompt"] for c in item)


def composition_rows(sampler: Sampler, judge, n: int) -> tuple[list[dict], dict]:
    rows, hits = [], {}
    for k in (1, 2, 3):
        items = held_out_set(k, n, SEED)
        seeds = seeds_for(len(items))
        empty = [""] * len(items)
        slots = [[item[j]["prompt"] for item in items] for j in range(k)]
        methods = {"compose AND": (empty, slots, [WEIGHT] * k)} if k > 1 else {"CFG (= compose, = caption)": (empty, slots, [WEIGHT])}
        if k > 1:
            methods["joined caption (CFG)"] = (empty, [[joined(item) for item in items]], [WEIGHT])
        for name, (bases, sl, w) in methods.items():
            t0 = time.perf_counter()
            h = all_satisfied(judge, sampler.images(bases, sl, w, seeds), items)
            hits[(k, name)] = h
            rows.append({"k": k, "method": name, "weight": WEIGHT, "all_satisfied": metrics.bootstrap_mean(h).to_dict(),
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(f"k={k} {name}: {metrics.bootstrap_mean(h)}", flush=True)
    gaps = {}
    for k in (2, 3):
        d = hits[(k, "compose AND")] - hits[(k, "joined caption (CFG)")]
        gaps[k] = metrics.bootstrap_mean(d).to_dict()  # paired: same seeds and concepts
    return rows, gaps


def not_rows(sampler: Sampler, judge, n: int) -> list[dict]:
    items = not_set(n, SEED)
    seeds = seeds_for(len(items))
    pos = [it["pos"]["prompt"] for it in items]
    neg = [it["neg"]["prompt"] for it in items]
    empty = [""] * len(items)
    methods = {
        "positive only (base rate)": (empty, [pos], [WEIGHT]),
        "compose NOT (w, -w)": (empty, [pos, neg], [WEIGHT, -WEIGHT]),
        "negative_prompt": (neg, [pos], [WEIGHT]),
    }
    rows = []
    for name, (bases, slots, w) in methods.items():
        x = sampler.images(bases, slots, w, seeds)
        cells = judge.read(x.float())
        ok = np.array([present(cells, i, it["pos"]) and not present(cells, i, it["neg"]) for i, it in enumerate(items)],
                      dtype=float)
        absent = np.array([not present(cells, i, it["neg"]) for i, it in enumerate(items)], dtype=float)
        rows.append({"method": name, "not_success": metrics.bootstrap_mean(ok).to_dict(),
                     "negated_absent": metrics.bootstrap_mean(absent).to_dict()})
        print(f"NOT {name}: {metrics.bootstrap_mean(ok)}", flush=True)
    return rows


def weight_sweep(sampler: Sampler, judge, n: int) -> list[dict]:
    items = held_out_set(2, n, SEED + 1)
    seeds = seeds_for(len(items))
    empty = [""] * len(items)
    slots = [[item[j]["prompt"] for item in items] for j in range(2)]
    rows = []
    for w in SWEEP:
        c = all_satisfied(judge, sampler.images(empty, slots, [w, w], seeds), items)
        j = all_satisfied(judge, sampler.images(empty, [[joined(i) for i in items]], [w], seeds), items)
        rows.append({"weight": w, "compose AND": metrics.bootstrap_mean(c).to_dict(),
                     "joined caption (CFG)": metrics.bootstrap_mean(j).to_dict()})
        print(f"w={w}: compose {c.mean():.3f}, joined {j.mean():.3f}", flush=True)
    return rows


def speed(sampler: Sampler, n_images: int = 8, repeats: int = 3) -> dict:
    """Seconds per image at k = 3, three ways, timed alternately (median of ``repeats``):
    batched (one forward pass of (k + 1) B per step), one pass per condition over the batch of B
    images, and the official pipeline's way (one image per run, one pass of batch 1 per condition)."""
    items = held_out_set(3, n_images, SEED + 2)
    slots = [[item[j]["prompt"] for item in items] for j in range(3)]
    seeds = seeds_for(n_images)
    w, empty = [WEIGHT] * 3, [""] * n_images
    ways = {
        "batched": lambda: sampler.images(empty, slots, w, seeds),
        "per_condition": lambda: sampler.images(empty, slots, w, seeds, batched=False),
        "official_one_at_a_time": lambda: [sampler.images([""], [[s[i]] for s in slots], w, [seeds[i]], batched=False)
                                           for i in range(n_images)],
    }
    for run in ways.values():  # warm-up (oneDNN primitives for every batch size)
        run()
    times = {name: [] for name in ways}
    for _ in range(repeats):
        for name, run in ways.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) / n_images)
    med = {name: float(np.median(v)) for name, v in times.items()}
    return {"k": 3, "n_images": n_images, "steps": STEPS, "threads": torch.get_num_threads(),
            **{f"{name}_s_per_image": round(v, 4) for name, v in med.items()},
            "ratio_vs_official": round(med["official_one_at_a_time"] / med["batched"], 2),
            "ratio_vs_per_condition": round(med["per_condition"] / med["batched"], 2)}


def plot(sweep: list[dict], path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in ("compose AND", "joined caption (CFG)"):
        v = [r[name] for r in sweep]
        fig.add_trace(go.Scatter(
            x=[r["weight"] for r in sweep], y=[e["value"] for e in v], name=name, mode="lines+markers",
            error_y={"type": "data", "symmetric": False, "array": [e["high"] - e["value"] for e in v],
                     "arrayminus": [e["value"] - e["low"] for e in v]}))
    fig.update_layout(title="k = 2 held-out pairs: all-satisfied accuracy vs weight w (shapes judge)",
                      xaxis_title="weight w per concept", yaxis_title="all-satisfied", yaxis_range=[0, 1])
    fig.write_html(path, include_plotlyjs="cdn")


def fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(r: dict) -> str:
    lines = [f"# Compose benchmark ({r['measured']}, {r['machine']})", "",
             f"Model `shapes-t2i` ({r['model_train_steps']} training steps), DDIM {STEPS} steps, weight w = {WEIGHT}, "
             f"{r['n']} images per cell, judge `judge-shapes`; 95% bootstrap intervals.", "",
             "| k | method | all-satisfied |", "|---|---|---|"]
    lines += [f"| {row['k']} | {row['method']} | {fmt(row['all_satisfied'])} |" for row in r["composition"]]
    lines += ["", "Compose minus joined caption (paired, same seeds and concepts): "
              + ", ".join(f"k = {k}: {fmt(v)}" for k, v in r["compose_minus_caption"].items()), "",
              "| NOT method | NOT success | negated concept absent |", "|---|---|---|"]
    lines += [f"| {row['method']} | {fmt(row['not_success'])} | {fmt(row['negated_absent'])} |" for row in r["not"]]
    lines += ["", "| w | compose AND (k = 2) | joined caption (k = 2) |", "|---|---|---|"]
    lines += [f"| {row['weight']:g} | {fmt(row['compose AND'])} | {fmt(row['joined caption (CFG)'])} |"
              for row in r["weight_sweep"]]
    s = r["speed"]
    lines += ["", f"Speed at k = 3 ({s['n_images']} images, {s['steps']} steps, {s['threads']} threads), seconds per image:",
              "", "| evaluation | s / image | batched is faster by |", "|---|---|---|",
              f"| batched: one forward pass of 4 x {s['n_images']} per step | {s['batched_s_per_image']:.3f} | - |",
              f"| one pass per condition over the {s['n_images']} images | {s['per_condition_s_per_image']:.3f} | "
              f"{s['ratio_vs_per_condition']:.2f}x |",
              f"| official pipeline: one image per run, one pass of batch 1 per condition | "
              f"{s['official_one_at_a_time_s_per_image']:.3f} | {s['ratio_vs_official']:.2f}x |", ""]
    return "\n".join(lines)


def main(quick: bool = False, speed_only: bool = False) -> dict:
    n, n_sweep = (18, 18) if quick else (126, 63)
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    from studio.core.loading import read_manifest

    out = ROOT / "results"
    if speed_only:  # re-time an existing result (the judged figures stay as they were)
        result = json.loads((out / "compose.json").read_text())
        with manager.use("shapes-t2i") as dm:
            result["speed"] = speed(Sampler(manager, dm))
        (out / "compose.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "compose.md").write_text(markdown(result))
        print(markdown(result))
        return result
    with manager.use("shapes-t2i") as dm, manager.use("judge-shapes") as judge:
        sampler = Sampler(manager, dm)
        composition, gaps = composition_rows(sampler, judge, n)
        nots = not_rows(sampler, judge, n)
        sweep = weight_sweep(sampler, judge, n_sweep)
        fast = speed(sampler)
    result = {"measured": time.strftime("%Y-%m-%d"), "machine": machine_description(), "n": n,
              "model_train_steps": read_manifest()["shapes-t2i"].get("train_steps"),
              "composition": composition, "compose_minus_caption": gaps, "not": nots, "weight_sweep": sweep,
              "speed": fast, "goals": "k=2 all-satisfied >= 0.70 and >= 0.25 above the joined caption; "
                                      "k=3 >= 0.50; batched >= 1.5x faster than one pass per condition at k=3"}
    if not quick:
        out.mkdir(exist_ok=True)
        (out / "compose.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "compose.md").write_text(markdown(result))
        plot(sweep, out / "compose_weights.html")
    print(markdown(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="18 images per cell, nothing written")
    parser.add_argument("--speed-only", action="store_true", help="re-time the speed figures of compose.json")
    args = parser.parse_known_args()[0]
    main(args.quick, args.speed_only)
