"""Weights benchmark (issue 25): D2NWG's generated digits classifiers with no training, as an
initialisation, and memorisation, for D2NWG and p-diff, beside the baselines that isolate its idea.

Models: the shipped ``d2nwg-digits`` and ``pdiff-digits`` (``studio train d2nwg-digits`` /
``pdiff-digits``), read through the studio's manager; image features from ``simclr-digits`` (never
the judge). Every figure is the method's own calls: :func:`studio.methods.weights.run` (the tab's
run: DDIM 25, k = 32, then fine-tuning) and :mod:`studio.core.weightgen` (samplers, accuracy,
memorisation, fine-tuning). Accuracy is on the task's test split; a "draw" is a few-shot set of
5 training examples per class (``support_seed``), which is also the sampler's seed.

* **Selection set** (``SELECTION_TASKS`` x draws ``SELECTION_DRAWS``): the fine-tuning learning rate is
  chosen from ``LRS`` by the mean test accuracy after 1, 10 and 100 SGD steps over four starts
  (best generated, random init, nearest zoo model, shared base), one rate for every start as in the
  tab. Nothing else is chosen.
* **Report set** (``HELD_OUT_TASKS`` + ``SEEN_TASKS`` x draws ``REPORT_DRAWS``): every figure below.
  Per (task, draw), with no training: D2NWG (mean of 32, and the one best on the few examples); D2NWG
  with the few-shot set of a *different* task (``PARTNER``: the conditioning's ablation); random init;
  the shared base; the zoo model of the most similar seen task (:func:`weights.nearest_seen_task`);
  the zoo average and a per-coordinate Gaussian fitted to the seen checkpoints (the memorisation
  paper's baselines); that nearest zoo model plus Gaussian noise at D2NWG's median distance to its
  nearest checkpoint; a model trained from scratch on the same examples (100 SGD steps); the ceiling,
  the zoo's own models of the task. Samplers: DDIM 25 (common) and each method's own, the full DDPM
  (1,024 steps for D2NWG, on draws ``DDPM_DRAWS`` only: 18 s a draw on one thread).
  As an initialisation: accuracy after 1, 10, 100 steps from the best generated model, random init,
  the nearest zoo model and the base.
* **Memorisation**: share of generated models agreeing with some training checkpoint on > 99% of the
  test images, their distance to it (median, quartiles) beside the median distance between two
  checkpoints of one task; for p-diff on its three tasks (its 200 checkpoints each), with p-diff's own
  claim (generated vs its training checkpoints' accuracy).
* **Timing**: sampling + evaluating k = 32 (the tab's ``sample_and_evaluate``), median of 5 after a
  warm-up, 2 threads; the recipe's training seconds from MANIFEST.json.

Intervals: 95% percentile bootstrap (:mod:`studio.core.metrics`) over **tasks** (each task's mean over
its draws), paired where two methods share the draws; an interval covering zero is "no difference".

``python benchmarks/bench_weights.py [--quick]`` writes ``benchmarks/results/weights.json`` and
``weights.md``; rows are cached under ``runs/bench-weights/`` so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import weightgen as G
from studio.core.manager import ModelManager
from studio.core.metrics import bootstrap_difference, bootstrap_mean
from studio.core.sampling import run_to_end
from studio.data import digit_tasks
from studio.methods import weights
from studio.nets.weightgen import N_PARAMS, init_vector
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
K = 32
LRS = (0.01, 0.03, 0.1)
FT_STEPS = (1, 10, 100)
SELECTION_TASKS = tuple(t.id for t in digit_tasks.SELECTION)
SELECTION_DRAWS = (100, 101, 102)
HELD_OUT_TASKS = tuple(t.id for t in digit_tasks.HELD_OUT)
# spread over the seen grid: every rotation quarter, style and noise level, a class subset; p-diff's three first
SEEN_TASKS = ("rot0-plain-clean", "rot90-thick-clean", "rot180-thin-noisy", "rot270-plain-noisy",
              "rot135-thick-noisy", "rot0-plain-clean-5to9")
REPORT_DRAWS = (0, 1, 2, 3, 4)
DDPM_DRAWS = (0, 1, 2)
# the shuffled condition: each task reads the few-shot set of the next one in its group (another style, a rotation
# 45-135 degrees away; never 180, which D2NWG confuses, see SHARES)
PARTNER = {**{t: HELD_OUT_TASKS[(i + 1) % 6] for i, t in enumerate(HELD_OUT_TASKS)},
           **{t: SEEN_TASKS[(i + 1) % 6] for i, t in enumerate(SEEN_TASKS[:-1])}, SEEN_TASKS[-1]: SEEN_TASKS[1]}
SHARES = ("the task itself", "the nearest seen task (class-mean features)", "the task rotated 180 degrees")
STARTS = ("generated", "random", "nearest", "base")


def _cached(path: Path, make):
    if path.exists():
        return json.loads(path.read_text())
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, default=float))
    return out


def _split(task: str, draw: int):
    s, te = digit_tasks.support(task, 5, draw), digit_tasks.data(task, "test")
    return torch.from_numpy(s.images), s.labels, torch.from_numpy(te.images), te.labels


def mean_best(thetas: torch.Tensor, xs, ys, xe, ye) -> dict:
    """Mean test accuracy of K models, and the test accuracy of the one best on the few examples."""
    acc = G.accuracy(thetas, xe, ye)
    return {"mean": float(acc.mean()), "best": float(acc[int(np.argmax(G.accuracy(thetas, xs, ys)))])}


def d2nwg(manager, cond_task: str, draw: int, steps: int, scheduler: str) -> torch.Tensor:
    """(K, P) D2NWG samples conditioned on ``cond_task``'s few-shot set ``draw`` (as the tab draws it)."""
    s = digit_tasks.support(cond_task, 5, draw)
    with manager.use(weights.ENCODER) as enc:
        feats = G.image_features(enc, s.images)
    with manager.use(weights.MODEL) as gen:
        sets, present = G.few_shot_set(feats, s.labels, G.PER_CLASS, torch.Generator().manual_seed(draw))
        return run_to_end(G.d2nwg_sample(gen, sets, present, K, draw, steps, scheduler))


def finetuned(starts: torch.Tensor, xs, ys, xe, ye, lr: float, seed: int) -> list[list[float]]:
    """Test accuracy per start after each of ``FT_STEPS`` SGD steps on the few examples."""
    return [list(map(float, a)) for step, a, _ in G.finetune(starts, xs, ys, max(FT_STEPS), lr, seed=seed,
                                                             eval_x=xe, eval_y=ye, record=FT_STEPS) if step]


def selection_row(manager, task: str, draw: int, lr: float) -> dict:
    r = run_to_end(weights.run(weights.Params(task=task, k=K, seed=draw, support_seed=draw,
                                              finetune_steps=max(FT_STEPS), lr=lr), manager))
    xs, ys, xe, ye = _split(task, draw)
    with manager.use(weights.MODEL) as gen:
        base = gen.tensors["base"].clone()
    curve = {c["step"]: c for c in r.curve}
    b = finetuned(base[None], xs, ys, xe, ye, lr, draw)
    return {str(s): {**{k: curve[s][k] for k in STARTS[:3]}, "base": b[i][0]} for i, s in enumerate(FT_STEPS)}


def report_row(manager, task: str, draw: int, lr: float, ddpm: bool) -> dict:
    """Every no-training figure, the fine-tuning curves and memorisation for one (task, draw)."""
    r = run_to_end(weights.run(weights.Params(task=task, k=K, seed=draw, support_seed=draw,
                                              finetune_steps=max(FT_STEPS), lr=lr), manager))
    xs, ys, xe, ye = _split(task, draw)
    g = torch.Generator().manual_seed(10_000 + draw)  # the Gaussian and noise baselines' draws
    with manager.use(weights.MODEL) as gen:
        ck, ck_tasks = (v.clone() if torch.is_tensor(v) else v for v in gen.training_checkpoints())
        base, zoo, zoo_tasks = gen.tensors["base"].clone(), gen.tensors["checkpoints"].clone(), gen.info["checkpoint_tasks"]
    near = zoo[zoo_tasks.index(r.nearest_task)]
    own = zoo[[i for i, t in enumerate(zoo_tasks) if t == task]]
    dist = np.array([m["distance"] for m in r.memorisation])
    g_rand = torch.Generator().manual_seed(draw)  # the run's own random initialisations
    randoms = torch.stack([init_vector(g_rand) for _ in range(K)])
    one = lambda theta: float(G.accuracy(theta[None], xe, ye)[0])
    curve = {c["step"]: c for c in r.curve}
    out = {"task": task, "draw": draw, "split": digit_tasks.split_of(digit_tasks.task(task)),
           "nearest_task": r.nearest_task,
           "d2nwg": {"mean": float(r.accuracy.mean()), "best": float(r.accuracy[r.best])},
           "random": mean_best(randoms, xs, ys, xe, ye), "base": one(base), "nearest": one(near),
           "zoo_average": one(ck.mean(0)),
           "gaussian": mean_best(ck.mean(0) + ck.std(0) * torch.randn(K, N_PARAMS, generator=g), xs, ys, xe, ye),
           "nearest_noise": mean_best(near + float(np.median(dist)) / math.sqrt(N_PARAMS)
                                      * torch.randn(K, N_PARAMS, generator=g), xs, ys, xe, ye),
           "ceiling": float(r.zoo_accuracy.mean()),
           "memo": {"copies": float(np.mean([m["agreement"] > 0.99 for m in r.memorisation])),
                    "distances": dist.tolist(), "spread": r.spread,
                    "own_zoo_distance": float(np.median(G.memorisation(own, ck, xe, ck_tasks).distance))}}
    b = finetuned(base[None], xs, ys, xe, ye, lr, draw)
    out["finetune"] = {str(s): {**{k: curve[s][k] for k in STARTS[:3]}, "base": b[i][0]}
                       for i, s in enumerate(FT_STEPS)}
    out["scratch"] = out["finetune"][str(max(FT_STEPS))]["random"]
    if ddpm:
        th = d2nwg(manager, task, draw, 1024, "ddpm")
        nm = G.memorisation(th, ck, xe, ck_tasks)
        out["ddpm"] = mean_best(th, xs, ys, xe, ye)
        out["memo_ddpm"] = {"copies": float((nm.agreement > 0.99).mean()), "distances": nm.distance.tolist()}
    return out


def rotated(task: str, degrees: int = 180) -> str:
    t = digit_tasks.task(task)
    return digit_tasks.Task((t.rotation + degrees) % 360, t.style, t.noise, t.classes).id


def conditioning_row(manager, task: str, draw: int) -> dict:
    """The conditioning's ablation (D2NWG given ``PARTNER[task]``'s few-shot set, scored on ``task``) and which
    seen task the generated models' nearest training checkpoints belong to (the tab's run, DDIM 25)."""
    r = run_to_end(weights.run(weights.Params(task=task, k=K, seed=draw, support_seed=draw, finetune_steps=0), manager))
    its = [m["its_task"] for m in r.memorisation]
    share = lambda name: float(np.mean([t == name for t in its]))
    xs, ys, xe, ye = _split(task, draw)
    return {"partner": PARTNER[task], "shuffled": mean_best(d2nwg(manager, PARTNER[task], draw, 25, "ddim"), xs, ys, xe, ye),
            "shares": dict(zip(SHARES, (share(task), share(r.nearest_task), share(rotated(task)))))}


def pdiff_rows(manager, task: str, draws, model: str = "pdiff-digits") -> dict:
    """p-diff on one of its tasks: its checkpoints' accuracy, and per sampler the generated models'."""
    te = digit_tasks.data(task, "test")
    with manager.use(model) as gen:
        ck, ck_tasks = (v.clone() if torch.is_tensor(v) else v for v in gen.training_checkpoints(task))
        samples = {name: [run_to_end(G.pdiff_sample(gen, task, K, d, steps, sched)) for d in draws]
                   for name, steps, sched in (("DDPM 1,000", 1000, "ddpm"), ("DDIM 25", 25, "ddim"))}
    out = {"task": task, "checkpoint_accuracy": G.accuracy(ck, te.images, te.labels).tolist(), "samplers": {}}
    for name, th in samples.items():
        th = torch.cat(th)
        nm = G.memorisation(th, ck, te.images, ck_tasks)
        out["samplers"][name] = {"accuracy": G.accuracy(th, te.images, te.labels).tolist(), "spread": nm.spread,
                                 "agreement": nm.agreement.tolist(), "distances": nm.distance.tolist()}
    return out


def timing(manager) -> dict:
    """Seconds for the tab's sample + evaluate of k = 32 (DDIM 25), median of 5 after one warm-up, with 2
    threads (the goal's setting) and 1 (the other core busy)."""
    out = {"load_average": os.getloadavg()[0]}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for name, model, task in (("D2NWG", weights.MODEL, HELD_OUT_TASKS[0]), ("p-diff", "pdiff-digits", SEEN_TASKS[0])):
            if model in manager:
                runs = [run_to_end(weights.run(weights.Params(model=model, task=task, k=K, seed=i, finetune_steps=0),
                                               manager)).seconds["sample_and_evaluate"] for i in range(6)]
                out[f"{name}, {threads} threads"] = {"median": float(np.median(runs[1:])), "runs": runs}
    torch.set_num_threads(1)
    return out


def recipe_seconds() -> dict:
    from studio.core.loading import ZOO_DIR, read_manifest

    m = read_manifest(ZOO_DIR)
    return {n: {k: m[n].get(k) for k in ("zoo_seconds", "train_seconds", "machine")} for n in ("d2nwg-digits", "pdiff-digits")
            if n in m}


# ----------------------------------------------------------------------------- statistics
GROUPS = {"held-out": HELD_OUT_TASKS, "seen": SEEN_TASKS}


def by_task(rows: list[dict], get, tasks) -> list[float]:
    """Each task's mean of ``get(row)`` over its draws (rows where it is None are left out)."""
    out = []
    for t in tasks:
        v = [x for x in (get(r) for r in rows if r["task"] == t) if x is not None]
        if v:
            out.append(float(np.mean(v)))
    return out


def interval(values) -> list[float] | None:
    if not len(values):
        return None
    e = bootstrap_mean(values)
    return [e.value, e.low, e.high]


def paired(rows, a, b, tasks) -> list[float] | None:
    """mean over tasks of a - b (per task: the mean over draws where both exist), with its interval."""
    both = lambda r: None if a(r) is None or b(r) is None else a(r) - b(r)
    return interval(by_task(rows, both, tasks))


def _get(*path):
    def get(r):
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None
        return r
    return get


def _mean_best(label: str, key: str, note: str = "") -> tuple:
    return ((f"{label}: mean of 32", _get(key, "mean")), (f"{label}: best of 32{note}", _get(key, "best")))


ACCURACY = (  # (label, getter) per line of the no-training table; D2NWG's own two first
    *_mean_best("D2NWG, DDIM 25", "d2nwg", " on the few examples"), *_mean_best("D2NWG, DDPM 1,024 (draws 0-2)", "ddpm"),
    *_mean_best("D2NWG, another task's few-shot set (DDIM 25)", "shuffled"), *_mean_best("random init", "random"),
    ("shared base (upright plain digits)", _get("base")), ("nearest seen task's zoo model", _get("nearest")),
    ("zoo average (seen checkpoints)", _get("zoo_average")),
    *_mean_best("Gaussian fitted to the seen checkpoints", "gaussian"),
    *_mean_best("nearest zoo model + noise at D2NWG's distance", "nearest_noise"),
    ("trained from scratch on the few examples (100 SGD steps)", _get("scratch")),
    ("ceiling: the task's own zoo models (5, full training split)", _get("ceiling")),
)


def summarise(rows: list[dict]) -> dict:
    out = {"accuracy": {}, "vs_d2nwg": {}, "finetune": {}, "gain": {}, "memorisation": {}, "shares": {}}
    for group, tasks in GROUPS.items():
        out["shares"][group] = {name: interval(by_task(rows, _get("shares", name), tasks)) for name in SHARES}
        out["accuracy"][group] = {label: interval(by_task(rows, get, tasks)) for label, get in ACCURACY}
        out["vs_d2nwg"][group] = {label: {"mean": paired(rows, _get("d2nwg", "mean"), get, tasks),
                                          "best": paired(rows, _get("d2nwg", "best"), get, tasks)}
                                  for label, get in ACCURACY[2:]}
        out["finetune"][group] = {st: {str(s): interval(by_task(rows, _get("finetune", str(s), st), tasks)) for s in FT_STEPS}
                                  for st in STARTS}
        out["gain"][group] = {st: {str(s): paired(rows, _get("finetune", str(s), "generated"),
                                             _get("finetune", str(s), st), tasks) for s in FT_STEPS}
                              for st in STARTS[1:]}
        mine = [r for r in rows if r["task"] in tasks]
        memo = {}
        for name, key in (("DDIM 25", "memo"), ("DDPM 1,024", "memo_ddpm")):
            d = np.concatenate([r[key]["distances"] for r in mine if key in r] or [np.zeros(0)])
            if len(d):
                memo[name] = {"copies": interval(by_task(mine, _get(key, "copies"), tasks)),
                              "distance_quartiles": np.percentile(d, [25, 50, 75]).tolist()}
        memo["spread"] = float(np.median([r["memo"]["spread"] for r in mine]))
        memo["own_zoo_distance"] = float(np.median([r["memo"]["own_zoo_distance"] for r in mine]))
        out["memorisation"][group] = memo
    return out


def summarise_pdiff(p: dict) -> dict:
    ck = np.array(p["checkpoint_accuracy"])
    out = {"task": p["task"], "checkpoints": {"mean": float(ck.mean()), "best": float(ck.max()), "n": len(ck)}}
    for name, s in p["samplers"].items():
        acc, e = np.array(s["accuracy"]), bootstrap_difference(s["accuracy"], ck)
        out[name] = {"mean": float(acc.mean()), "best": float(acc.max()), "vs_checkpoints": [e.value, e.low, e.high],
                     "copies": float(np.mean(np.array(s["agreement"]) > 0.99)), "spread": s["spread"],
                     "distance_quartiles": np.percentile(s["distances"], [25, 50, 75]).tolist()}
    return out


# ----------------------------------------------------------------------------- the report
def _ci(v, signed: bool = False) -> str:
    if v is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    cell = f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"
    return cell + (" no difference" if signed and v[1] <= 0 <= v[2] else "")


def _md_sets(r: dict, s: dict, groups: list[str]) -> list[str]:
    sets = (f"**Selection set** (chooses the fine-tuning rate among {', '.join(map(str, r['lrs']))}, nothing else): "
            f"tasks {', '.join(r['selection_tasks'])} x draws {', '.join(map(str, r['selection_draws']))}. "
            f"**Report set** (every figure below): held-out tasks {', '.join(r['held_out_tasks'])}; seen tasks "
            f"{', '.join(r['seen_tasks'])}; x draws {', '.join(map(str, r['report_draws']))} (the few-shot set of 5 "
            "training examples per class, and the sampler's seed); the full DDPM on draws "
            f"{', '.join(map(str, r['ddpm_draws'])) or '(none)'} only.")
    lines = [f"Machine: {r['machine']}, {r['date']}; one thread (timing: two); this invocation {r['minutes']:.1f} min "
             "(rows cached by earlier invocations under runs/bench-weights/ were read, not re-run). Accuracy: the task's test split, never used for any choice on the report set.",
             "", sets, "", "Intervals: 95% percentile bootstrap over the tasks of a group (each task's mean over its "
             "draws); differences paired on the same draws; an interval covering zero is *no difference*.", "",
             "## Selection: the fine-tuning rate", "",
             "| lr | criterion (mean over starts and steps 1, 10, 100) | " + " | ".join(
                 f"{st} @1 / 10 / 100" for st in STARTS) + " |", "|---" * (2 + len(STARTS)) + "|"]
    for lr, row in r["selection"].items():
        cells = " | ".join(" / ".join(f"{row['starts'][st][str(k)]:.3f}" for k in FT_STEPS) for st in STARTS)
        chosen = " **chosen**" if float(lr) == r["lr"] else ""
        lines.append(f"| {lr}{chosen} | {row['criterion']:.3f} | {cells} |")
    return lines


def _md_accuracy(r: dict, s: dict, groups: list[str]) -> list[str]:
    lines = []
    lines += ["## Accuracy with no training", "", "| model | " + " | ".join(groups) + " |",
              "|---" * (1 + len(groups)) + "|"]
    for label, _ in ACCURACY:
        lines.append(f"| {label} | " + " | ".join(_ci(s["accuracy"][g][label]) for g in groups) + " |")
    lines += ["", "D2NWG (DDIM 25) minus each alternative, paired: its mean of 32 against the alternative's mean "
              "(or single model), its best-on-the-few-examples against the alternative's best (or single model):", "",
              "| alternative | " + " | ".join(f"{g}: mean | {g}: best" for g in groups) + " |",
              "|---" * (1 + 2 * len(groups)) + "|"]
    for label, _ in ACCURACY[2:]:
        lines.append(f"| {label} | " + " | ".join(f"{_ci(s['vs_d2nwg'][g][label]['mean'], True)} | "
                                                  f"{_ci(s['vs_d2nwg'][g][label]['best'], True)}" for g in groups) + " |")
    pairs = "; ".join(f"{t} <- {p}" for t, p in r["partner"].items())
    lines += ["", f"The other task's few-shot set (the conditioning's ablation; task <- the set it reads): {pairs}.", "",
              "Which seen task the generated models' nearest training checkpoints belong to (share of the 32, DDIM 25):",
              "", "| nearest checkpoint of | " + " | ".join(groups) + " |", "|---" * (1 + len(groups)) + "|"]
    for name in SHARES:
        lines.append(f"| {name} | " + " | ".join(_ci(s["shares"][g][name]) for g in groups) + " |")
    return lines


def _md_initialisation(r: dict, s: dict, groups: list[str]) -> list[str]:
    lines = []
    lines += [f"## As an initialisation (SGD, momentum 0.9, lr {r['lr']}, on the same 50 examples)", "",
              "Test accuracy after n steps from: the best generated model (on the few examples), a random init, the "
              "nearest seen task's zoo model, the shared base:", "",
              "| start | " + " | ".join(f"{g}: {k} steps" for g in groups for k in FT_STEPS) + " |",
              "|---" * (1 + len(groups) * len(FT_STEPS)) + "|"]
    for st in STARTS:
        lines.append(f"| {st} | " + " | ".join(_ci(s["finetune"][g][st][str(k)]) for g in groups for k in FT_STEPS) + " |")
    lines += ["", "Gain of the generated start (generated minus the other start, paired; the paper's +6% few-shot "
              "is context only, a different scale and protocol):", "",
              "| against | " + " | ".join(f"{g}: {k} steps" for g in groups for k in FT_STEPS) + " |",
              "|---" * (1 + len(groups) * len(FT_STEPS)) + "|"]
    for st in STARTS[1:]:
        lines.append(f"| {st} | " + " | ".join(_ci(s["gain"][g][st][str(k)], True) for g in groups for k in FT_STEPS) + " |")
    return lines


def _md_memorisation(r: dict, s: dict, groups: list[str]) -> list[str]:
    lines = []
    lines += ["## Memorisation", "", "D2NWG: each generated model's nearest training checkpoint (the 220 seen "
              "zoo models, L2 over the 1,954 parameters) and the share agreeing with it on more than 99% of the test "
              "images; beside it the median distance between two checkpoints of one seen task, and how far the task's "
              "own zoo models (trained on it, never shown to D2NWG) lie from the nearest seen checkpoint:", "",
              "| group | sampler | share > 99% agreement | distance: quartiles (median) | two checkpoints of one "
              "task | the task's own zoo models |", "|---|---|---|---|---|---|"]
    for g in groups:
        m = s["memorisation"][g]
        for name in ("DDIM 25", "DDPM 1,024"):
            if name in m:
                q = m[name]["distance_quartiles"]
                lines.append(f"| {g} | {name} | {_ci(m[name]['copies'])} | {q[0]:.2f} - {q[2]:.2f} ({q[1]:.2f}) | "
                             f"{m['spread']:.2f} | {m['own_zoo_distance']:.2f} |")
    if r.get("pdiff"):
        lines += ["", "p-diff, one generator per task, 200 last-layer checkpoints each (draws "
                  f"{', '.join(map(str, r['report_draws']))} x 32 models per sampler). Its own claim, generated "
                  "vs its training checkpoints (mean difference with an unpaired bootstrap interval; *best* is the "
                  "highest test accuracy, as the paper reports it); memorisation against its checkpoints:", "",
                  "| task | sampler | checkpoints: mean / best | generated: mean / best | generated - checkpoints "
                  "| share > 99% agreement | distance quartiles (median) | two checkpoints |", "|---" * 8 + "|"]
        for p in r["pdiff"]:
            c = p["checkpoints"]
            for name in ("DDPM 1,000", "DDIM 25"):
                x, q = p[name], p[name]["distance_quartiles"]
                lines.append(f"| {p['task']} | {name} | {c['mean']:.3f} / {c['best']:.3f} | {x['mean']:.3f} / "
                             f"{x['best']:.3f} | {_ci(x['vs_checkpoints'], True)} | {x['copies']:.0%} | "
                             f"{q[0]:.3f} - {q[2]:.3f} ({q[1]:.3f}) | {x['spread']:.3f} |")
    else:
        lines += ["", "p-diff: `pdiff-digits` was not in the zoo when this ran."]
    return lines


def _md_time(r: dict, s: dict, groups: list[str]) -> list[str]:
    lines = []
    t = r["timing"]
    lines += ["## Time", "", f"Sample + evaluate k = 32 (the tab's run, DDIM 25, no fine-tuning), "
              f"median of 5 after a warm-up, 2 threads and 1 (load average {t['load_average']:.1f} at the start; goal under 3 s):", "",
              "| generator, threads | median s | runs (first = warm-up) |", "|---|---|---|"]
    for name, v in t.items():
        if name != "load_average":
            lines.append(f"| {name} | {v['median']:.2f} | {', '.join(f'{x:.2f}' for x in v['runs'])} |")
    lines += ["", "Training (MANIFEST.json; goal: zoo + VAE + diffusion under 30 minutes on 2 cores):", "",
              "| entry | zoo s | generator s | machine |", "|---|---|---|---|"]
    for name, v in r["recipe"].items():
        lines.append(f"| {name} | {v['zoo_seconds']} | {v['train_seconds']} | {v['machine']} |")
    return lines


def markdown(r: dict) -> str:
    parts = (_md_sets, _md_accuracy, _md_initialisation, _md_memorisation, _md_time)
    return "\n\n".join("\n".join(part(r, r["summary"], list(GROUPS))) for part in parts) + "\n"


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    t0 = time.time()
    manager = ModelManager(device="cpu")
    manager.register_zoo()
    cache = RUNS_DIR / ("bench-weights-quick" if quick else "bench-weights")
    sel_draws, draws = (SELECTION_DRAWS[:1], REPORT_DRAWS[:1]) if quick else (SELECTION_DRAWS, REPORT_DRAWS)
    ddpm_draws = () if quick else DDPM_DRAWS
    held, seen = (HELD_OUT_TASKS[:2], SEEN_TASKS[:2]) if quick else (HELD_OUT_TASKS, SEEN_TASKS)
    selection = {}
    for lr in LRS:
        rows = [_cached(cache / f"sel-{t}-{d}-lr{lr}.json", lambda t=t, d=d: selection_row(manager, t, d, lr))
                for t in SELECTION_TASKS for d in sel_draws]
        starts = {st: {str(k): float(np.mean([row[str(k)][st] for row in rows])) for k in FT_STEPS} for st in STARTS}
        selection[str(lr)] = {"starts": starts, "criterion": float(np.mean([v for d in starts.values()
                                                                             for v in d.values()]))}
    lr = float(max(selection, key=lambda k: selection[k]["criterion"]))
    print("chosen lr", lr, flush=True)
    rows = []
    for t in held + seen:
        for d in draws:
            rows.append({**_cached(cache / f"row-{t}-{d}-lr{lr}{'-ddpm' if d in ddpm_draws else ''}.json",
                                   lambda t=t, d=d: report_row(manager, t, d, lr, d in ddpm_draws)),
                         **_cached(cache / f"cond-{t}-{d}-{PARTNER[t]}.json", lambda t=t, d=d: conditioning_row(manager, t, d))})
            print(t, d, f"{rows[-1]['d2nwg']['mean']:.3f}", f"{time.time() - t0:.0f}s", flush=True)
    pdiff = []
    if "pdiff-digits" in manager:
        with manager.use("pdiff-digits") as gen:
            ptasks = list(gen.info["tasks"])
        pdiff = [summarise_pdiff(_cached(cache / f"pdiff-{t}.json", lambda t=t: pdiff_rows(manager, t, draws)))
                 for t in ptasks]
    return {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "k": K, "lrs": list(LRS),
            "lr": lr, "selection_tasks": list(SELECTION_TASKS), "selection_draws": list(sel_draws),
            "held_out_tasks": list(held), "seen_tasks": list(seen), "report_draws": list(draws),
            "ddpm_draws": list(ddpm_draws), "partner": {t: PARTNER[t] for t in held + seen},
            "selection": selection, "summary": summarise(rows), "pdiff": pdiff, "timing": timing(manager),
            "recipe": recipe_seconds(), "minutes": (time.time() - t0) / 60, "rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 + 2 tasks, one draw, no full DDPM (a smoke run)")
    args = ap.parse_args()
    res = main(args.quick)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stem = "weights-quick" if args.quick else "weights"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
