"""Classify benchmark (issue 21), digits: ``digits-cond`` read as a Diffusion Classifier.

The classifier is :func:`studio.methods.classify.adaptive`, the official ``eval_prob_adaptive``
(shared noise per timestep slot, adaptive rounds, exact evaluation counts). Per image i the noises
are drawn from seed ``NOISE_SEED + i`` (the official code draws fresh noise per image).

* **Selection** (the tab's default schedule): ``N_SELECT`` *training* digits, each schedule of
  :data:`SCHEDULES`; the best accuracy wins, ties to fewer evaluations. No test digit is used here.
* **Report**, the 360 test digits (never used to choose anything):
  (a) the chosen adaptive schedule, shared noise;
  (b) shared noise, all ten classes at every timestep (one round of the chosen schedule's last size);
  (c) as (b) with an independent noise per class (the paper's ablation), same evaluations;
  and (b) / (c) at fewer timesteps, for accuracy against evaluations per image. Paired differences
  (same digits, same noise seeds) with 95% bootstrap intervals.
* **Speed**: seconds per digit at the tab's defaults (``classify.Params``), 2 threads, 20 test digits
  (``--speed-only`` re-times it alone, on a quiet machine).

The papers' figures (SD-2 zero-shot CIFAR-10 88.5%, DiT-XL/2 ImageNet 79.1%) are context only: a
1 M-parameter digits model on 16 x 16 digits is not those models on those datasets.

Writes ``benchmarks/results/classify.json`` and ``classify.md`` (partial results are kept in
``runs/classify-bench-partial.json`` while it runs, and a rerun resumes from them).
Run: ``python benchmarks/bench_classify.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.loading import load_zoo
from studio.core.sampling import make_scheduler, predicted_eps, run_to_end
from studio.data import digits
from studio.methods import classify
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
PARTIAL = RUNS_DIR / "classify-bench-partial.json"
NOISE_SEED = 21000  # report: test digit i uses noise seed NOISE_SEED + i
SELECT_SEED = 31000  # selection: training digit j uses noise seed SELECT_SEED + j
N_SELECT = 100
SCHEDULES = {  # name -> [(timesteps by the end of the round, candidates kept)]
    "5/3, 25/1": [(5, 3), (25, 1)],
    "10/3, 50/1": [(10, 3), (50, 1)],
    "10/5, 25/2, 50/1": [(10, 5), (25, 2), (50, 1)],
    "20/3, 100/1": [(20, 3), (100, 1)],
}
CURVE = (10, 20)  # (b) and (c) also at these numbers of timesteps


class DigitsClassifier:
    def __init__(self, dm):
        self.dm = dm
        self.sched = make_scheduler("ddpm", dm.scheduler_config, dm.prediction_type)
        self.T = int(self.sched.config.num_train_timesteps)

    def eps_fn(self, x_t, t, idx):
        pred = self.dm.model_fn(x_t, t, {"class_labels": idx})
        return predicted_eps(self.sched, pred, x_t, t, self.dm.prediction_type)

    def one(self, x0: torch.Tensor, plan, seed: int, shared: bool = True) -> dict:
        return run_to_end(classify.adaptive(self.eps_fn, x0, 10, plan, self.sched.alphas_cumprod, seed=seed,
                                            shared_noise=shared, batch_size=128, T=self.T))

    def many(self, images: np.ndarray, labels: np.ndarray, plan, seed0: int, shared: bool = True) -> dict:
        t0, correct, evals = time.perf_counter(), [], []
        for i, (x, y) in enumerate(zip(images, labels)):
            out = self.one(torch.from_numpy(x), plan, seed0 + i, shared)
            correct.append(int(out["predicted"] == int(y)))
            evals.append(out["evals"])
        correct = np.array(correct, dtype=float)
        return {"accuracy": metrics.bootstrap_mean(correct).to_dict(), "evals_per_image": float(np.mean(evals)),
                "seconds_per_image_1_thread": round((time.perf_counter() - t0) / len(labels), 3),
                "correct": correct.astype(int).tolist()}


def paired(a: dict, b: dict) -> dict:
    return metrics.bootstrap_mean(np.array(a["correct"], float) - np.array(b["correct"], float)).to_dict()


def speed(n: int = 20) -> dict:
    """What the tab costs per digit: ``classify.run`` on the whole zoo (the judge's and the supervised
    classifier's readings included), models loaded by a warm-up run."""
    from studio.core.manager import ModelManager

    torch.set_num_threads(2)
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    p = classify.Params()
    run_to_end(classify.run(p, manager))  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        run_to_end(classify.run(classify.Params(test_index=i), manager))
    torch.set_num_threads(1)
    return {"seconds_per_digit_2_threads": round((time.perf_counter() - t0) / n, 3), "digits": n,
            "schedule": f"{p.n_samples} / {p.to_keep}"}


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    done = json.loads(PARTIAL.read_text()) if PARTIAL.exists() and not quick else {}

    def keep(key, compute):
        if key not in done:
            done[key] = compute()
            if not quick:
                PARTIAL.parent.mkdir(exist_ok=True)
                PARTIAL.write_text(json.dumps(done) + "\n")
            print(key, {k: v for k, v in done[key].items() if k != "correct"}, flush=True)
        return done[key]

    dm = load_zoo("digits-cond")
    clf = DigitsClassifier(dm)
    train, test = digits.load("train"), digits.load("test")
    n_select, n_test = (20, 40) if quick else (N_SELECT, len(test.labels))
    pick = np.random.default_rng(21).choice(len(train.labels), size=n_select, replace=False)
    selection = {name: keep(f"select {name}", lambda plan=plan: clf.many(train.images[pick], train.labels[pick], plan,
                                                                          SELECT_SEED))
                 for name, plan in SCHEDULES.items()}
    chosen = min(selection, key=lambda k: (-selection[k]["accuracy"]["value"], selection[k]["evals_per_image"]))
    plan, last = SCHEDULES[chosen], SCHEDULES[chosen][-1][0]
    x, y = test.images[:n_test], test.labels[:n_test]
    report = {"(a) adaptive, shared noise": keep("a", lambda: clf.many(x, y, plan, NOISE_SEED)),
              f"(b) all classes x {last} timesteps, shared noise": keep(f"b{last}", lambda: clf.many(x, y, [(last, 1)], NOISE_SEED)),
              f"(c) all classes x {last} timesteps, independent noise": keep(
                  f"c{last}", lambda: clf.many(x, y, [(last, 1)], NOISE_SEED, shared=False))}
    curve = {}
    for n in CURVE:
        if n < last:
            curve[f"shared {n}"] = keep(f"b{n}", lambda n=n: clf.many(x, y, [(n, 1)], NOISE_SEED))
            curve[f"independent {n}"] = keep(f"c{n}", lambda n=n: clf.many(x, y, [(n, 1)], NOISE_SEED, shared=False))
    a, b, c = report.values()
    result = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "model": "digits-cond",
              "selection": {"digits": f"{n_select} training digits (rng 21), noise seeds {SELECT_SEED} + j",
                            "rows": {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in selection.items()},
                            "chosen": chosen},
              "report": {"digits": f"the first {n_test} test digits, noise seeds {NOISE_SEED} + i",
                         "rows": {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in report.items()},
                         "curve": {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in curve.items()},
                         "a_minus_b": paired(a, b), "b_minus_c": paired(b, c),
                         "evals_ratio_a_over_b": round(a["evals_per_image"] / b["evals_per_image"], 3)},
              "speed": speed(5 if quick else 20),
              "goals": "accuracy >= 0.95; adaptive (a) as accurate as (b) with at most half its evaluations; shared "
                       "noise beats independent at equal evaluations; under 3 s per digit at the tab's defaults"}
    return result


def markdown(r: dict) -> str:
    fmt = lambda e: f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
    sel, rep = r["selection"], r["report"]
    lines = [f"# Classify benchmark: `digits-cond` as a Diffusion Classifier ({r['machine']}, {r['date']})", "",
             "The official `eval_prob_adaptive` (studio.methods.classify.adaptive), error l2, one noise per timestep "
             "slot. Toy scale: the papers' figures (SD-2 zero-shot CIFAR-10 88.5%, DiT-XL/2 ImageNet 79.1%) are "
             "context, not comparable.", "",
             f"## Selection ({sel['digits']})", "", "| schedule (timesteps/kept per round) | accuracy | evaluations / image |",
             "|---|---|---|"]
    lines += [f"| {k} | {fmt(v['accuracy'])} | {v['evals_per_image']:.0f} |" for k, v in sel["rows"].items()]
    lines += ["", f"Chosen (best accuracy, ties to fewer evaluations): **{sel['chosen']}**.", "",
              f"## Report ({rep['digits']})", "", "| method | accuracy | evaluations / image | s / image (1 thread) |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {fmt(v['accuracy'])} | {v['evals_per_image']:.0f} | {v['seconds_per_image_1_thread']} |"
              for k, v in {**rep["rows"], **rep["curve"]}.items()]
    lines += ["", f"Paired (same digits and noise seeds): (a) - (b) {fmt(rep['a_minus_b'])}; (b) - (c) "
                  f"{fmt(rep['b_minus_c'])}. (a) uses {rep['evals_ratio_a_over_b']:.2f} of (b)'s evaluations.", "",
              f"Speed at the tab's defaults ({r['speed']['schedule']}), 2 threads: {r['speed']['seconds_per_digit_2_threads']} s "
              f"per digit ({r['speed']['digits']} digits).", "", f"Goals: {r['goals']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 selection and 40 test digits, nothing written")
    ap.add_argument("--speed-only", action="store_true", help="re-time the tab's defaults in classify.json (quiet machine)")
    args = ap.parse_args()
    if args.speed_only:
        out = json.loads((ROOT / "results" / "classify.json").read_text())
        out["speed"] = {**speed(), "measured": time.strftime("%Y-%m-%d")}
    else:
        out = main(args.quick)
    text = markdown(out)
    if not args.quick or args.speed_only:
        (ROOT / "results").mkdir(exist_ok=True)
        (ROOT / "results" / "classify.json").write_text(json.dumps(out, indent=2) + "\n")
        (ROOT / "results" / "classify.md").write_text(text)
    print(text)
