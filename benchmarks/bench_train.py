"""Issue 23: the digits recipe's objectives, REPA and self-conditioning, trained side by side.

    python benchmarks/bench_train.py --run VARIANT[,VARIANT...] [--seeds 0,1,2]   # train + watch (resumable)
    python benchmarks/bench_train.py --probe                                     # decoder probes (DDPM rows)
    python benchmarks/bench_train.py --timing                                    # seconds a step, one process
    python benchmarks/bench_train.py --processes                                 # 1 vs 2 accelerate processes
    python benchmarks/bench_train.py --report                                    # tables from what is there

Every run is ``DigitsRecipe`` with the *small* UNet (``unets.DIGITS_SIZES["small"]``, 0.26 M parameters), batch
64, lr 2e-3 (50 warm-up steps, cosine to 0.1), EMA as the recipe, for :data:`STEPS` steps, one thread; seeds
0, 1, 2 (the seed fixes the initial weights and the data stream, so runs of one seed see the same images in the
same order). Every :data:`EVERY` steps the EMA weights draw the same :data:`IMAGES` images (image i from seed
``WATCH_SEED + i``, class i % 10, guidance 1, 20 steps of the objective's own sampler: DDIM or FlowMatch Euler)
and the judges read them (``studio.train.watch``): FD-digits against the 360 test digits, judge accuracy.

Rows (``diffusion.DIGITS_VARIANTS``): eps, v (DDPM path); rectified flow with SD3's timestep densities uniform,
logit-normal (0, 1), mode (1.29), CosMap; REPA (lambda 0.5, down block 1's 4x4 tokens aligned to the frozen
``simclr-digits`` encoder) on its paper's path, rectified flow with uniform t, so its baseline row is rf-uniform;
self-conditioning (DDAE++) on the epsilon path of its pixel-space UNets, baseline row eps.

Selection set: none. No setting is chosen on these runs: lambda, the densities and the mode scale are the
papers'; network, batch, lr and steps were fixed before any run; REPA's block is the one whose grid is the
encoder's 4x4 (down block 1; the official k is a third of the depth). All seeds are report seeds.

Intervals: FD and accuracy of a config pool its 3 seeds' images (3 x IMAGES), bootstrap over images; a paired
difference resamples image indices jointly (image i of both rows starts from the same noise and class).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.core import metrics  # noqa: E402
from studio.train.common import RUNS_DIR, machine_description  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STEPS, EVERY, IMAGES, BATCH, LR, WARMUP, SIZE = 600, 100, 200, 64, 2e-3, 50, "small"
SEEDS = (0, 1, 2)
ROWS = ("eps", "v", "rf-uniform", "rf-lognorm", "rf-mode", "rf-cosmap", "rf-uniform-repa", "eps-selfcond")
PAIRS = (("rf-lognorm", "rf-uniform", "SD3: logit-normal(0, 1) beats uniform t"),
         ("rf-mode", "rf-uniform", "SD3: mode (1.29) vs uniform t"),
         ("rf-cosmap", "rf-uniform", "SD3: CosMap vs uniform t"),
         ("v", "eps", "v vs epsilon prediction"),
         ("rf-lognorm", "eps", "rectified flow (logit-normal) vs DDPM epsilon"),
         ("rf-uniform-repa", "rf-uniform", "REPA on vs off (same path, t, prior)"),
         ("eps-selfcond", "eps", "self-conditioning on vs off (same path, t, prior)"))
PROBE_T = 10  # the shipped probe's t (studio/zoo/probe-digits)


def run_name(variant: str, seed: int) -> str:
    return f"bench-train-{variant}-s{seed}"


def train_one(variant: str, seed: int) -> None:
    import torch

    from studio.train import diffusion
    from studio.train.watch import DigitsWatch

    torch.set_num_threads(1)
    recipe = diffusion.DigitsRecipe(steps=STEPS, variant=variant, size=SIZE, batch_size=BATCH, lr=LR, warmup=WARMUP,
                                    run=run_name(variant, seed))
    folder = RUNS_DIR / recipe.run_name
    if (folder / "result.json").exists():
        return
    result = diffusion.train(recipe, seed=seed, checkpoint_every=EVERY, export=False, export_to=folder / "model",
                             evaluate_every=EVERY, evaluator=DigitsWatch(n=IMAGES, keep=True))
    (folder / "result.json").write_text(json.dumps(result, indent=2))


def probe_runs() -> None:
    """The decoder probe of every finished DDPM-path run (the probe reads DDPM-path features, the Classify tab's
    code), kept in its result.json with the chosen block's hit on each test digit (for paired intervals)."""
    for v in ROWS:
        for s in SEEDS:
            folder = RUNS_DIR / run_name(v, s)
            path = folder / "result.json"
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            if json.loads((folder / "model" / "studio.json").read_text())["prediction_type"] == "flow":
                continue
            if "hits" not in result.get("probe", {}):
                result["probe"] = probe(folder / "model")
                path.write_text(json.dumps(result, indent=2))
                print(v, s, result["probe"]["test"], flush=True)


def timing(steps: int = 60, warm: int = 5, rounds: int = 2) -> dict:
    """Seconds a training step of every row, measured one after another in this one process (one thread), in
    ``rounds`` interleaved rounds (their mean and range), so the rows are compared under the same load: the runs
    above shared the machine with other jobs."""
    import torch

    from studio.train import diffusion

    torch.set_num_threads(1)
    per_round: dict[str, list[float]] = {v: [] for v in ROWS}
    for r in range(rounds):
        for v in ROWS:
            run = f"bench-train-timing-{v}"
            subprocess.run(["rm", "-rf", str(RUNS_DIR / run)], check=True)
            recipe = diffusion.DigitsRecipe(steps=STEPS, variant=v, size=SIZE, batch_size=BATCH, lr=LR, warmup=WARMUP,
                                            run=run)
            diffusion.train(recipe, seed=0, export=False, until=warm + steps, checkpoint_every=10_000)
            lines = [json.loads(x) for x in (RUNS_DIR / run / "loss.jsonl").read_text().splitlines()]
            per_round[v].append((lines[-1]["seconds"] - lines[warm - 1]["seconds"]) / steps)
            print(r, v, round(per_round[v][-1], 4), flush=True)
    out = {v: round(float(np.mean(x)), 4) for v, x in per_round.items()}
    (RESULTS / "train_timing.json").write_text(json.dumps({
        "seconds_per_step": out, "rounds": {v: [round(x, 4) for x in xs] for v, xs in per_round.items()},
        "steps": steps, "warm_up": warm, "machine": machine_description(), "date": time.strftime("%Y-%m-%d")}, indent=2))
    return out


def processes(steps: int = 60) -> dict:
    """Seconds per step of the same run (eps, small UNet, global batch 64) with 1 and 2 accelerate processes, launched
    as the Train tab launches its runs (``studio.methods.train.launch_command``)."""
    from studio.methods import train
    out = {}
    for n in (1, 2):
        run = f"bench-train-procs-{n}"
        subprocess.run(["rm", "-rf", str(RUNS_DIR / run)], check=True)
        p = train.Params(objective="eps", steps=steps, batch=BATCH, lr=LR, evaluate_every=0)  # 0: no evaluation
        cmd, env = train.launch_command(p, run, n), {**train.launch_env(n), "OMP_NUM_THREADS": "1"}
        began = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=True)
        lines = [json.loads(x) for x in (RUNS_DIR / run / "loss.jsonl").read_text().splitlines()]
        result = json.loads((RUNS_DIR / run / "result.json").read_text())
        secs = [b["seconds"] - a["seconds"] for a, b in zip(lines[9:], lines[10:])]  # after 10 warm-up steps
        out[n] = {"seconds_per_step": round(float(np.median(secs)), 4), "steps": steps, "global_batch": BATCH,
                  "final_loss": lines[-1]["loss"], "weights_sha256": result["weights_sha256"],
                  "wall_seconds": round(time.perf_counter() - began, 1)}
    (RESULTS / "train_processes.json").write_text(json.dumps(out, indent=2))
    return out


def load_runs() -> dict:
    runs = {}
    for v in ROWS:
        for s in SEEDS:
            folder = RUNS_DIR / run_name(v, s)
            if not (folder / "result.json").exists():
                continue
            evals = [json.loads(x) for x in (folder / "eval.jsonl").read_text().splitlines()]
            kept = {e["step"]: np.load(folder / f"watch-{e['step']}.npz") for e in evals}
            runs[(v, s)] = {"evals": evals, "kept": kept, "result": json.loads((folder / "result.json").read_text())}
    return runs


def pooled(runs: dict, v: str, step: int):
    seeds = [s for s in SEEDS if (v, s) in runs and step in runs[(v, s)]["kept"]]
    if not seeds:
        return None, None, []
    f = np.concatenate([runs[(v, s)]["kept"][step]["features"] for s in seeds])
    h = np.concatenate([runs[(v, s)]["kept"][step]["hits"] for s in seeds])
    return f, h, seeds


def report() -> None:
    import torch

    from studio.core.loading import load_zoo
    from studio.data import digits

    real = metrics.features(load_zoo("fd-digits"), torch.from_numpy(digits.load("test").images))
    runs = load_runs()
    steps = list(range(EVERY, STEPS + 1, EVERY))
    table = {}
    for v in ROWS:
        for step in steps:
            f, h, seeds = pooled(runs, v, step)
            if f is None:
                continue
            table[(v, step)] = {"fd": metrics.frechet_features(f, real).to_dict(),
                                "accuracy": metrics.bootstrap_mean(h.astype(float)).to_dict(), "seeds": seeds,
                                "fd_by_seed": [round(runs[(v, s)]["evals"][steps.index(step)]["fd_digits"]["value"], 2)
                                               for s in seeds]}
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "steps": STEPS, "every": EVERY,
           "images": IMAGES, "batch": BATCH, "lr": LR, "network": SIZE, "seeds": list(SEEDS),
           "selection": "none (settings from the papers or fixed before any run)",
           "curves": {f"{v}@{s}": row for (v, s), row in table.items()}, "pairs": [], "seconds_per_step": {},
           "probe": {}, "repa_step_ratio": None}
    for v in ROWS:
        secs = [runs[(v, s)]["result"]["seconds"] / runs[(v, s)]["result"]["step"] for s in SEEDS if (v, s) in runs]
        if secs:
            out["seconds_per_step"][v] = round(float(np.mean(secs)), 4)
        probes = [runs[(v, s)]["result"]["probe"] for s in SEEDS if (v, s) in runs and "probe" in runs[(v, s)]["result"]]
        if probes:
            out["probe"][v] = {"test": [p["test"] for p in probes], "block": [p["block"] for p in probes],
                               "mean": round(float(np.mean([p["test"] for p in probes])), 4)}
    for a, b, claim in PAIRS:
        fa, ha, sa = pooled(runs, a, STEPS)
        fb, hb, sb = pooled(runs, b, STEPS)
        if fa is None or fb is None or sa != sb:
            continue
        d = metrics.frechet_paired_difference(real, fb, fa)
        acc = metrics.bootstrap_mean(ha.astype(float) - hb.astype(float))  # paired: image i of both rows
        out["pairs"].append({"a": a, "b": b, "claim": claim, "fd_a_minus_b": d.to_dict(), "accuracy_a_minus_b": acc.to_dict(),
                             "seeds": sa})
    out["repa_step_ratio"] = step_ratio(table, "rf-uniform-repa", "rf-uniform", steps)
    out["probe_difference"] = probe_difference(runs)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "train.md").write_text(markdown(out, steps))
    print((RESULTS / "train.md").read_text())


def step_ratio(table: dict, method: str, base: str, steps: list[int]) -> dict | None:
    """The steps ``method`` needs to reach ``base``'s final pooled FD (linear between evaluations), and the ratio."""
    if (base, STEPS) not in table or not all((method, s) in table for s in steps):
        return None
    target = table[(base, STEPS)]["fd"]["value"]
    curve = [(s, table[(method, s)]["fd"]["value"]) for s in steps]
    reached = None
    for (s0, f0), (s1, f1) in zip([(0, float("inf"))] + curve, curve):
        if f1 <= target:
            reached = s1 if not np.isfinite(f0) else s0 + (s1 - s0) * (f0 - target) / (f0 - f1)
            break
    return {"base_final_fd": round(target, 2), "steps_to_reach": None if reached is None else round(float(reached), 1),
            "ratio": None if reached is None else round(STEPS / reached, 2)}


def probe_difference(runs: dict) -> dict | None:
    """Self-conditioning minus plain, paired by (seed, test digit): a bootstrap over the 3 x 360 pairs."""
    a = [runs[("eps-selfcond", s)]["result"].get("probe", {}).get("hits") for s in SEEDS if ("eps-selfcond", s) in runs]
    b = [runs[("eps", s)]["result"].get("probe", {}).get("hits") for s in SEEDS if ("eps", s) in runs]
    if len(a) != len(SEEDS) or len(b) != len(SEEDS) or None in a + b:
        return None
    diff = np.concatenate([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b)])
    per_seed = [round(float(np.mean(x) - np.mean(y)), 4) for x, y in zip(a, b)]
    return {"per_seed": per_seed, "pooled": metrics.bootstrap_mean(diff).to_dict(),
            "note": "paired by seed and test digit (3 x 360); one digit of one seed is 0.0028"}


def fmt(e: dict, digits_: int = 1) -> str:
    return f"{e['value']:.{digits_}f} [{e['low']:.{digits_}f}, {e['high']:.{digits_}f}]"


def verdict(e: dict, lower_is_better: bool = True) -> str:
    if e["low"] <= 0 <= e["high"]:
        return "no difference"
    better = e["high"] < 0 if lower_is_better else e["low"] > 0
    return "better" if better else "worse"


def markdown(out: dict, steps: list[int]) -> str:
    L = ["# Train lab: objectives, REPA and self-conditioning on digits (issue 23)", "",
         f"Machine: {out['machine']}, one thread per run; {out['date']}. `python benchmarks/bench_train.py`.",
         f"Every run: the small digits UNet (0.26 M parameters), batch {out['batch']}, lr {out['lr']}, {out['steps']} steps, "
         f"seeds {out['seeds']}; every {out['every']} steps the EMA weights draw the same {out['images']} images "
         "(guidance 1, 20 steps of the objective's own sampler) and the studio's judges read them.",
         f"Selection set: {out['selection']}. All seeds are report seeds.",
         "FD-digits is a toy-scale Fréchet distance on the fd-digits net's features against the 360 test digits (not FID); "
         "intervals are 95% bootstrap over the pooled images of the 3 seeds; a paired difference whose interval covers 0 "
         "is called no difference. Lower FD is better.", "",
         "## FD-digits vs training steps (3 seeds pooled)", "",
         "| row | " + " | ".join(str(s) for s in steps) + " | s / step (shared load) |", "|---|" + "---|" * (len(steps) + 1)]
    for v in ROWS:
        cells = [f"{out['curves'][f'{v}@{s}']['fd']['value']:.0f}" if f"{v}@{s}" in out["curves"] else "–" for s in steps]
        L.append(f"| {v} | " + " | ".join(cells) + f" | {out['seconds_per_step'].get(v, float('nan')):.3f} |")
    L += ["", f"## At {STEPS} steps", "", "| row | FD-digits | per seed | judge accuracy |", "|---|---|---|---|"]
    for v in ROWS:
        r = out["curves"].get(f"{v}@{STEPS}")
        if r:
            L.append(f"| {v} | {fmt(r['fd'])} | {', '.join(str(x) for x in r['fd_by_seed'])} | {fmt(r['accuracy'], 3)} |")
    L += ["", "## The papers' claims at toy scale (A minus B, paired, at the last step)", "",
          "| A | B | claim | FD A - B | verdict | accuracy A - B | verdict |", "|---|---|---|---|---|---|---|"]
    for p in out["pairs"]:
        L.append(f"| {p['a']} | {p['b']} | {p['claim']} | {fmt(p['fd_a_minus_b'])} | {verdict(p['fd_a_minus_b'])} | "
                 f"{fmt(p['accuracy_a_minus_b'], 3)} | {verdict(p['accuracy_a_minus_b'], False)} |")
    r = out["repa_step_ratio"]
    L += ["", "## REPA: steps to reach the baseline's final FD", ""]
    if r is None:
        L.append("Not measured (runs missing).")
    elif r["steps_to_reach"] is None:
        L.append(f"REPA's pooled FD never reached rf-uniform's final {r['base_final_fd']} within {STEPS} steps: no speed-up.")
    else:
        L.append(f"rf-uniform ends at FD {r['base_final_fd']} after {STEPS} steps; REPA reaches it after about "
                 f"{r['steps_to_reach']} steps (linear between evaluations): a step ratio of {r['ratio']}x. "
                 "Context only: the paper reports more than 17.5x for SiT-XL/2 on ImageNet 256 with DINOv2-B.")
    L += ["", "## Self-conditioning: linear probe of the decoder features", "",
          f"Features: GAP of each decoder block at t = {PROBE_T} (null class), heads fit on 80% of the training digits, "
          "block and L2 strength chosen on the other 20%, accuracy on the 360 test digits (studio.train.probe's code).", ""]
    for v, p in out["probe"].items():
        L.append(f"- {v}: test accuracy per seed {p['test']} (blocks {p['block']}), mean {p['mean']}")
    d = out.get("probe_difference")
    if d:
        L.append(f"- self-cond minus eps: {fmt(d['pooled'], 4)} ({verdict(d['pooled'], False)}); per seed "
                 f"{d['per_seed']}; {d['note']}.")
    t = RESULTS / "train_timing.json"
    if t.exists():
        timing_ = json.loads(t.read_text())
        secs = timing_["seconds_per_step"]
        L += ["", "## Seconds a step, and FD at equal wall clock", "",
              f"Measured one row after another in one process, one thread ({timing_['steps']} steps after "
              f"{timing_['warm_up']} warm-up, batch {BATCH}, mean of {len(next(iter(timing_['rounds'].values())))} interleaved "
              f"rounds; {timing_['date']}): the table's runs above shared the "
              "machine with other jobs, so their own seconds are not comparable.", "",
              "| row | s / step | steps in the time its base row takes for 600 | FD-digits there |", "|---|---|---|---|"]
        rounds = timing_["rounds"]
        for v, base in (("rf-uniform-repa", "rf-uniform"), ("eps-selfcond", "eps")):
            if v in secs and base in secs:
                spread = max(max(rounds[x]) - min(rounds[x]) for x in (v, base))
                if abs(secs[v] - secs[base]) <= spread:  # within the rounds' own spread: no measurable cost
                    L.append(f"| {v} (base {base}: {secs[base]:.3f}) | {secs[v]:.3f} | no measurable difference "
                             f"(the rounds differ by up to {spread:.3f}) | – |")
                    continue
                equal = min(STEPS, STEPS * secs[base] / secs[v])
                fd = np.interp(equal, steps, [out["curves"][f"{v}@{s}"]["fd"]["value"] for s in steps])
                L.append(f"| {v} (base {base}: {secs[base]:.3f}) | {secs[v]:.3f} | {equal:.0f} | {fd:.1f} "
                         f"(base at 600: {out['curves'][f'{base}@{STEPS}']['fd']['value']:.1f}) |")
        for v in ROWS:
            if v not in ("rf-uniform-repa", "eps-selfcond") and v in secs:
                L.append(f"| {v} | {secs[v]:.3f} (rounds {timing_['rounds'][v]}) | – | – |")
    procs = RESULTS / "train_processes.json"
    if procs.exists():
        p = json.loads(procs.read_text())
        L += ["", "## One vs two accelerate processes (same global batch)", "",
              "| processes | s / step | final loss |", "|---|---|---|"]
        for n, row in p.items():
            L.append(f"| {n} | {row['seconds_per_step']} | {row['final_loss']} |")
        L.append("\nOne process runs one thread; two processes (gloo, `accelerate launch --multi_gpu` on CPU) run one "
                 "thread each on this machine's 2 cores, each on half the batch, so the step is shorter here; on a "
                 "busy machine it would not be. The losses differ because each process draws its own half batch "
                 "(the same global batch size, other images); that both ranks hold the same weights after every step "
                 "is checked by tests/test_accelerate.py and tests/test_train.py.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="", help="comma-separated rows to train")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--processes", action="store_true")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    for variant in [v for v in a.run.split(",") if v]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            print(f"{variant} seed {seed}", flush=True)
            train_one(variant, seed)
    if a.probe:
        probe_runs()
    if a.timing:
        timing()
    if a.processes:
        print(json.dumps(processes(), indent=2))
    if a.report:
        report()
