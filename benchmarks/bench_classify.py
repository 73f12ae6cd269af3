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
from studio.data import digits, shapes
from studio.methods import classify, compose
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


# ----------------------------------------------------------------------------- shapes (shapes-t2i)

SCENE_SEED = 52000  # report scene i: classify.binding_scene(SCENE_SEED + i) / one object from rng(SCENE_SEED + i)
GEN_SEED = 62000  # the model's own image of scene i: noise seed GEN_SEED + i
SHAPES_NOISE = 72000  # the classifier's noises for image i: seed SHAPES_NOISE + i
SPLIT_SEED = 21  # the learned timestep weights' fixed 50 % test half, then train / val 0.8 / 0.2
N_BIND, N_QUESTION = 160, 80
BIND_T = 30  # Self-Bench's default sampling_steps: 30 evenly spaced timesteps, every candidate at each
QUESTIONS = ("shape", "colour", "region", "caption")
SOURCES = {"renders": "real renders of the scene", "own": "shapes-t2i's own images of it, kept where judge-shapes "
           "confirms every object and nothing else (Self-Bench's in-domain set)"}


def shapes_partial(part: str) -> Path:
    return RUNS_DIR / f"classify-shapes-{part}.json"


class ShapesWorld:
    """shapes-t2i, its text encoder, the judge and the contrastive baseline, on one manager."""

    def __init__(self):
        from studio.core.manager import ModelManager

        self.manager = ModelManager(device="cpu")
        self.manager.register_zoo()
        self.dm = load_zoo("shapes-t2i")
        self.sched = make_scheduler("ddpm", self.dm.scheduler_config, self.dm.prediction_type)
        self.T = int(self.sched.config.num_train_timesteps)

    def conds(self, prompts: list[str]) -> dict:
        from studio.core.conditioning import text_conditions
        from studio.core.guidance import cat_conds

        return cat_conds(text_conditions(self.dm, self.manager, prompts))

    def errors(self, image: torch.Tensor, prompts: list[str], plan, seed: int) -> dict:
        table = self.conds(prompts)

        def eps_fn(x_t, t, idx):
            cond = {k: v[idx] for k, v in table.items()}
            return predicted_eps(self.sched, self.dm.model_fn(x_t, t, cond), x_t, t, self.dm.prediction_type)

        return run_to_end(classify.adaptive(eps_fn, image, len(prompts), plan, self.sched.alphas_cumprod, seed=seed,
                                            batch_size=128, T=self.T))

    def generate(self, captions: list[list[str]], seeds: list[int]) -> torch.Tensor:
        """Each image composes its captions (one: classifier-free guidance) at the Compose tab's defaults."""
        from bench_compose import Sampler

        sampler = Sampler(self.manager, self.dm, compose.Params.scheduler, compose.Params.steps)
        k = len(captions[0])
        return sampler.images([""] * len(seeds), [[c[j] for c in captions] for j in range(k)],
                              [compose.Params.guidance] * k, seeds)

    def confirmed(self, images: torch.Tensor, scenes: list, strict: bool) -> np.ndarray:
        """judge-shapes reads every object of the scene at its region and, ``strict``, nothing else;
        otherwise other objects may appear where none has the kind (shape and colour) of a scene
        object, so that no other candidate is also true (one-object captions were trained on scenes
        with up to three objects, and the model draws the others too)."""
        with self.manager.use("judge-shapes") as judge:
            s_cells, c_cells = (v.numpy() for v in judge.read(images.float()))
        ok = []
        for i, scene in enumerate(scenes):
            s_want, c_want = scene.cell_labels()
            asked = s_want > 0
            right = (s_cells[i][asked] == s_want[asked]).all() and (c_cells[i][asked] == c_want[asked]).all()
            kinds = {(int(s), int(c)) for s, c in zip(s_want[asked], c_want[asked])}
            others = [(int(s), int(c)) for s, c in zip(s_cells[i][~asked], c_cells[i][~asked]) if s > 0]
            ok.append(bool(right and (not others if strict else not kinds & set(others))))
        return np.array(ok)

    def extra_objects(self, images: torch.Tensor, scenes: list) -> int:
        """How many images hold more objects than their scene."""
        with self.manager.use("judge-shapes") as judge:
            s_cells, _ = judge.read(images.float())
        return int(sum(int((s_cells[i] > 0).sum()) > len(sc.objects) for i, sc in enumerate(scenes)))

    def clip_pick(self, image: torch.Tensor, prompts: list[str]) -> int:
        """The contrastive baseline's choice (-1 without one: only a --quick run goes on without it)."""
        read = classify.contrastive_reading(self.manager, self.dm, image, prompts)
        return prompts.index(read[0]["reads"]) if read else -1


def shapes_images(world: ShapesWorld, kind: str, n: int, cache: Path) -> dict:
    """Scenes, their renders and the model's own (judge-confirmed) images; cached in ``cache``."""
    if kind == "binding":
        scenes = [classify.binding_scene(SCENE_SEED + i) for i in range(n)]
    else:
        scenes = [shapes.random_scene(np.random.default_rng(SCENE_SEED + i), n_objects=1) for i in range(n)]
    renders = shapes.to_model_range(np.stack([shapes.render(s) for s in scenes]).transpose(0, 3, 1, 2))
    own = torch.from_numpy(np.load(cache)["own"]).float() if cache.exists() else None
    if own is None or len(own) != n:
        own = world.generate([[o.caption() for o in s.objects] for s in scenes], [GEN_SEED + i for i in range(n)])
        cache.parent.mkdir(exist_ok=True)
        np.savez_compressed(cache, own=own.numpy().astype(np.float16))
        own = own.half().float()  # as a resumed run reads them back
    ok = world.confirmed(own, scenes, strict=kind == "binding")
    return {"scenes": scenes, "renders": renders, "own": own, "confirmed": ok,
            "extra_objects": world.extra_objects(own, scenes)}


def binding_part(world: ShapesWorld, n: int, quick: bool, sources=tuple(SOURCES)) -> dict:
    """Per source, image and task: the two candidates' errors (noise space, unrounded: at the highest
    timesteps a v model's noise-space errors are below 1e-6) at BIND_T timesteps, the true candidate
    first. Resumable per image; one partial file per source, so the sources can run side by side."""
    tag = "-quick" if quick else ""
    data = shapes_images(world, "binding", n, RUNS_DIR / f"classify-shapes-binding-own{tag}.npz")
    done = {}
    for source in SOURCES:
        path = shapes_partial(f"binding-{source}{tag}")
        rows = done[source] = json.loads(path.read_text()) if path.exists() else {}
        for i, scene in enumerate(data["scenes"]):
            missing = [task for task in classify.BINDING if task not in rows.get(str(i), {})]
            if source not in sources or not missing or (source == "own" and not data["confirmed"][i]):
                continue
            image = data[source][i]
            tasks = {task: classify.binding_candidates(*scene.objects, task) for task in missing}
            prompts = sorted({c for cands in tasks.values() for c in cands})
            out = world.errors(image, prompts, [(BIND_T, 1)], SHAPES_NOISE + i)
            grid = classify.timestep_grid(world.T, BIND_T)
            err = np.zeros((len(prompts), BIND_T))
            for r in out["table"]:
                err[r["candidate"], grid.index(r["t"])] = r["error"]
            rows.setdefault(str(i), {}).update({task: {"errors": [err[prompts.index(c)].tolist() for c in cands]}
                                                for task, cands in tasks.items()})
            if i % 10 == 9:
                path.write_text(json.dumps(rows) + "\n")
                print(source, i + 1, "images", flush=True)
        if source in sources:
            path.write_text(json.dumps(rows) + "\n")
    return with_baseline(world, done, data, lambda scene: {
        task: (classify.binding_candidates(*scene.objects, task), 0) for task in classify.BINDING})


def with_baseline(world: ShapesWorld, done: dict, data: dict, tasks) -> dict:
    """The contrastive baseline's verdicts on the same images and candidates (``tasks(scene)``: task ->
    (candidates, true index)), and what was kept of the model's own images."""
    if classify.CONTRASTIVE in world.manager:
        for source in SOURCES:
            for i, row in done.get(source, {}).items():
                for task, (cands, truth) in tasks(data["scenes"][int(i)]).items():
                    row[task]["clip_right"] = int(world.clip_pick(data[source][int(i)], cands) == truth)
    done["confirmed"] = data["confirmed"].astype(int).tolist()
    done["extra_objects"] = data["extra_objects"]
    return done


def question_part(world: ShapesWorld, n: int, quick: bool) -> dict:
    """Per source, one-object image and question: right or wrong at the tab's default schedule, the
    evaluations used, and the contrastive baseline's verdict. Resumable per image."""
    path = shapes_partial("questions" + ("-quick" if quick else ""))
    done = json.loads(path.read_text()) if path.exists() else {}
    data = shapes_images(world, "questions", n, RUNS_DIR / f"classify-shapes-questions-own{'-quick' if quick else ''}.npz")
    p = classify.Params(model="shapes-t2i", source="shapes scene")
    for source in SOURCES:
        rows = done.setdefault(source, {})
        for i, scene in enumerate(data["scenes"]):
            if str(i) in rows or (source == "own" and not data["confirmed"][i]):
                continue
            image, row = data[source][i], {}
            for q in QUESTIONS:
                names, truth = classify.question_candidates(scene.objects[0], q)
                out = world.errors(image, names, classify.schedule(p, len(names), world.T), SHAPES_NOISE + i)
                row[q] = {"right": int(out["predicted"] == truth), "evals": out["evals"]}
            rows[str(i)] = row
            if i % 10 == 9:
                path.write_text(json.dumps(done) + "\n")
                print(source, i + 1, "images", flush=True)
        path.write_text(json.dumps(done) + "\n")
    return with_baseline(world, done, data, lambda scene: {
        q: classify.question_candidates(scene.objects[0], q) for q in QUESTIONS})


def split_halves(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official split: a fixed 50 % test half; the rest train / val 0.8 / 0.2."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test, rest = order[: n // 2], order[n // 2:]
    n_val = max(1, round(0.2 * len(rest)))
    return rest[n_val:], rest[:n_val], test


def right_share(scores: np.ndarray) -> np.ndarray:
    """Per image, 1 when the true candidate (index 0) has the highest score, 0 when another has, and
    1 / k when k candidates tie for the highest (the expected hit of a random tie-break: the errors
    are stored with the truth first, so an argmax would count every tie as right)."""
    top = scores >= scores.max(1, keepdims=True)
    return top[:, 0] / top.sum(1)


def binding_report(done: dict, abar: np.ndarray) -> dict:
    """Accuracy per source and task. Errors as the classifier computes them (noise space) and in the
    model's own space (v: the noise-space error divided by abar_t, exactly, as eps_hat - eps =
    sqrt(abar_t) (v_hat - v)); uniform, learned (the official learner) and single-timestep weighting."""
    est = lambda v: metrics.bootstrap_mean(np.asarray(v, float)).to_dict()
    grid = classify.timestep_grid(1000, BIND_T)
    out = {}
    for source in SOURCES:
        rows = done.get(source, {})
        if not rows:
            continue
        for task in classify.BINDING:
            keys = sorted(rows, key=int)
            clip_right = np.array([rows[i][task].get("clip_right", 0) for i in keys], float)
            tr, va, te = split_halves(len(keys))
            truth = np.zeros(len(keys), dtype=int)
            entry = {"images": len(keys), "contrastive (all)": est(clip_right), "test half": {"contrastive": est(clip_right[te])},
                     "learned": {"train": len(tr), "val": len(va), "test": len(te)}}
            for space in ("noise", "v"):
                err = np.array([rows[i][task]["errors"] for i in keys])  # (N, 2, T)
                if space == "v":
                    err = err / abar[grid]
                uniform = right_share(-err.mean(-1))
                learned = classify.learn_timestep_weights(err, truth, tr, va)
                lw = right_share(-(err[te] * learned["weights"]).sum(-1))
                per_t = [right_share(-err[:, :, k]) for k in range(BIND_T)]
                best_t = int(np.argmax([v[np.concatenate([tr, va])].mean() for v in per_t]))  # chosen off the test half
                entry[f"{space}: uniform (all)"] = est(uniform)
                entry[f"{space}: uniform - contrastive (all, paired)"] = est(uniform - clip_right)
                entry["test half"].update({
                    f"{space}: uniform": est(uniform[te]), f"{space}: learned weights": est(lw),
                    f"{space}: best single t": est(per_t[best_t][te]),
                    f"{space}: learned - uniform (paired)": est(lw - uniform[te])})
                entry[f"{space}: best_single_t"] = grid[best_t]
                entry[f"{space}: accuracy_by_t"] = [round(float(v.mean()), 3) for v in per_t]
                entry["learned"][space] = {"weights": [float(f"{w:.3g}") for w in learned["weights"]],
                                           "step": learned["step"], "val_accuracy": learned["val_accuracy"]}
                entry[f"{space}: correct_uniform"] = uniform.tolist()
            out[f"{source} / {task}"] = entry
    for task in classify.BINDING:  # the domain gap: renders vs own images (independent samples)
        a, b = out.get(f"renders / {task}"), out.get(f"own / {task}")
        if a and b:
            out[f"gap / {task}"] = {space: metrics.bootstrap_difference(a[f"{space}: correct_uniform"],
                                                                        b[f"{space}: correct_uniform"]).to_dict()
                                    for space in ("noise", "v")}
    return out


def question_report(done: dict) -> dict:
    out = {}
    for source in SOURCES:
        rows = [done[source][i] for i in sorted(done.get(source, {}), key=int)]
        for q in QUESTIONS if rows else ():
            right = np.array([r[q]["right"] for r in rows], float)
            clip = np.array([r[q].get("clip_right", 0) for r in rows], float)
            out[f"{source} / {q}"] = {"images": len(rows), "diffusion": metrics.bootstrap_mean(right).to_dict(),
                                      "contrastive": metrics.bootstrap_mean(clip).to_dict(),
                                      "diffusion - contrastive (paired)": metrics.bootstrap_mean(right - clip).to_dict(),
                                      "evals_per_image": float(np.mean([r[q]["evals"] for r in rows]))}
    return out


def shapes_main(part: str, quick: bool = False) -> dict:
    torch.set_num_threads(1)
    n_bind, n_q = (4, 8) if quick else (N_BIND, N_QUESTION)
    world = ShapesWorld()
    if classify.CONTRASTIVE not in world.manager and part == "all" and not quick:
        raise SystemExit(f"the contrastive baseline is missing: run `studio train {classify.CONTRASTIVE}` first")
    result = {}
    if part.startswith("binding") or part == "all":
        b = binding_part(world, n_bind, quick, tuple(SOURCES) if "-" not in part else (part.split("-")[1],))
        result["binding"] = {"confirmed_own": f"{sum(b['confirmed'])} of {len(b['confirmed'])} (strict: both objects, "
                             f"nothing else)", **binding_report(b, world.sched.alphas_cumprod.double().numpy())}
    if part in ("questions", "all"):
        q = question_part(world, n_q, quick)
        result["questions"] = {"confirmed_own": f"{sum(q['confirmed'])} of {len(q['confirmed'])} (the object at its "
                               f"region and no other object of its kind; {q['extra_objects']} of the images drew "
                               "other objects too)", **question_report(q)}
    return result


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


def shapes_markdown(r: dict) -> str:
    fmt = lambda e: f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
    lines = [f"# Classify benchmark, shapes world: `shapes-t2i` as a Diffusion Classifier ({r['machine']}, {r['date']})",
             "", "Images: " + "; ".join(f"**{k}**, {v}" for k, v in SOURCES.items()) + ". The model's own images: "
             f"Compose tab defaults ({compose.Params.scheduler} {compose.Params.steps} steps, weight "
             f"{compose.Params.guidance} per object), noise seed {GEN_SEED} + i. Classifier noises: seed "
             f"{SHAPES_NOISE} + i. The contrastive baseline is `clip-shapes` (same scenes and captions, same frozen "
             "text encoder). Toy scale: the papers' figures are context only.", "",
             "**Selection sets** (nothing is chosen on the reported scenes): the tab's schedule was chosen on 100 "
             "training digits (`classify.md`); the learned timestep weights and the best single timestep are chosen "
             f"on the train / val part (seed {SPLIT_SEED} split) and reported on the other, fixed test half. **Report "
             f"sets**: one-object scenes and two-object scenes from seed {SCENE_SEED} + i.", ""]
    if "questions" in r:
        q = r["questions"]
        lines += [f"## One object, one question at a time (tab defaults {classify.Params.n_samples} / "
                  f"{classify.Params.to_keep}); own images confirmed: {q['confirmed_own']}", "",
                  "| source / question | images | diffusion classifier | contrastive | diffusion - contrastive (paired) "
                  "| evaluations / image |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['images']} | {fmt(v['diffusion'])} | {fmt(v['contrastive'])} | "
                  f"{fmt(v['diffusion - contrastive (paired)'])} | {v['evals_per_image']:.0f} |"
                  for k, v in q.items() if isinstance(v, dict)]
        lines.append("")
    if "binding" in r:
        b = r["binding"]
        rows = {k: v for k, v in b.items() if isinstance(v, dict) and "images" in v}
        lines += [f"## Binding (two objects, two candidates, chance 0.5; {BIND_T} timesteps, every candidate at each, "
                  f"one shared noise per timestep); own images confirmed: {b['confirmed_own']}", "",
                  "Tasks: " + "; ".join(f"**{k}**: {v}" for k, v in classify.BINDING.items()) + ".", "",
                  "Two error spaces from the same evaluations: **noise** (what the classifier and the tab use: "
                  "`shapes-t2i` predicts v, turned into an epsilon estimate) and **v**, the model's own space (the "
                  "noise-space error divided by abar_t, exactly; the follow-up paper scores SD3 by its velocity error). "
                  "Ties count 1/2 (a random tie-break).", "",
                  "| source / task | images | noise, uniform | v, uniform | contrastive | noise - contrastive | v - contrastive |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['images']} | {fmt(v['noise: uniform (all)'])} | {fmt(v['v: uniform (all)'])} | "
                  f"{fmt(v['contrastive (all)'])} | {fmt(v['noise: uniform - contrastive (all, paired)'])} | "
                  f"{fmt(v['v: uniform - contrastive (all, paired)'])} |" for k, v in rows.items()]
        lines += ["", "Timestep weighting on the fixed test half (the official split: 50 % test, the rest train / val "
                  "0.8 / 0.2; the learned weights (the official learner: weights start at 1, Adam lr 0.01, 5,000 steps, "
                  "L1 1e-3, the step with the best validation accuracy kept) and the single t are chosen without the "
                  "test half):", "",
                  "| source / task | test images | space | uniform | learned weights | best single t | learned - uniform | contrastive |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, v in rows.items():
            h = v["test half"]
            for space in ("noise", "v"):
                lines.append(f"| {k} | {v['learned']['test']} | {space} | {fmt(h[f'{space}: uniform'])} | "
                             f"{fmt(h[f'{space}: learned weights'])} | {fmt(h[f'{space}: best single t'])} "
                             f"(t = {v[f'{space}: best_single_t']}) | {fmt(h[f'{space}: learned - uniform (paired)'])} | "
                             f"{fmt(h['contrastive'])} |")
        lines += ["", "Accuracy by single timestep (t = " + ", ".join(map(str, classify.timestep_grid(1000, BIND_T))) + "; "
                  "the same in both spaces, which differ by a factor per t):", ""]
        lines += [f"- {k}: " + " ".join(f"{a:.2f}" for a in v["noise: accuracy_by_t"]) for k, v in rows.items()]
        gaps = {k: v for k, v in b.items() if k.startswith("gap / ")}
        if gaps:
            lines += ["", "Domain gap, renders minus own images (uniform; independent samples): "
                      + "; ".join(f"{k[6:]}: noise {fmt(v['noise'])}, v {fmt(v['v'])}" for k, v in gaps.items()) + "."]
        lines.append("")
    return "\n".join(lines)


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
    ap.add_argument("--shapes", choices=("binding", "binding-renders", "binding-own", "questions", "all"),
                    help="the shapes-t2i part (binding tasks, per-question accuracy) -> classify_shapes.{json,md}; "
                         "'binding-renders', 'binding-own' and 'questions' can run side by side, 'all' then writes the results")
    args = ap.parse_args()
    if args.shapes:
        out = shapes_main(args.shapes, args.quick)
        out.update({"machine": machine_description(), "date": time.strftime("%Y-%m-%d")})
        text = shapes_markdown(out)
        if args.shapes == "all" and not args.quick:
            (ROOT / "results" / "classify_shapes.json").write_text(json.dumps(out, indent=2) + "\n")
            (ROOT / "results" / "classify_shapes.md").write_text(text)
        print(text)
        raise SystemExit(0)
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
