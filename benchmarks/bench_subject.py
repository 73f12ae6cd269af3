"""VAR and ARBooth at toy scale: next-scale sampling against the diffusion model, and subject tuning's claims.

Part **speed**: ``var-shapes`` (its sampler as ``studio eval var-shapes`` chose it on the SELECTION prompts)
against ``shapes-t2i`` (DPM-Solver++ at its default guidance, a sweep of step counts) on the REPORT prompts
x 2, the same seeds (2000 + i) as the zoo's figures, one process, the same threads: judge accuracy
(shape and colour; region), FD-shapes, seconds per image; the *equal quality* point is the fewest
diffusion steps whose region accuracy reaches the VAR's.

Part **subject** (ARBooth, :mod:`studio.train.arbooth`): every variant is tuned on the same subject
pictures, with the same iterations, learning rate, batch and seeds, from the same ``var-shapes``:

* **arbooth**: cross-attention + FFN, the placeholder block, prior distillation, coarse-heavy weights;
* **full**: naive fine-tuning (every layer, the word's own embedding, no prior, uniform weights);
* one part of ARBooth switched off at a time: **no-prior**, **all-layers**, **uniform-weights**,
  **fine-weights** (reversed: coarse 0.5, fine 1), **no-placeholder**.

Learning rate and iterations are chosen for ARBooth on the SELECTION subjects (pink circle, hollow green
triangle; tuning seed 0) by subject fidelity + prompt fidelity, then every variant is reported with them on
the REPORT subjects (orange square, hollow red square) x tuning seeds 0 and 1. Per tuned model:

* 36 images of "a sks <shape> at the <region>" (9 regions x 4 seeds, 7000 + i): **subject fidelity**
  (mean cosine similarity of ``fd-shapes`` features to the 4 subject pictures: a DINO-score stand-in, on
  a net no variant trained), **prompt fidelity** (``judge-shapes`` finds the shape in the asked region),
  **diversity** (mean pairwise feature distance within each region's 4 images);
* 64 images of the class prompt "a <shape>" (seeds 8000 + i): **drift**, as **class fidelity** (the judge still
  finds the class shape), **reading agreement** (1 - the total-variation distance between the judge's readings,
  shape and colour of the first object, of the tuned and the untuned model's sets: distributions, since in an
  autoregressive sampler one changed early token re-routes a whole sample and per-seed agreement was 0.05-0.13
  for every variant in a first run), and FD-shapes between the two sets; the same again sampled without
  guidance (cfg 0), since prior distillation protects the class prompt's logits but not the empty caption's;
* trainable parameters and tuning seconds.

The untuned model's drift figures compare it with itself on other seeds (class seeds 18000 + i): the floor that
sets of this size reach by chance alone.

Intervals: 95% bootstrap over images (pooled over subjects and seeds); each variant minus ARBooth is
paired on the same prompts and seeds; an interval covering 0 is "no difference".

``python benchmarks/bench_subject.py`` writes ``benchmarks/results/subject.json`` / ``.md``; ``--part speed``
or ``--part subject`` runs one part (the other part's figures are kept; ``--reuse-selection`` keeps the last
selection's learning rate and iterations instead of choosing them again); ``--quick``: a smoke run
(a few iterations and images; nothing written to results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.manager import ModelManager
from studio.core.sampling import run_to_end
from studio.data import shapes, subjects
from studio.train import arbooth as A
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))

from studio import evaluate  # noqa: E402
from studio.methods import subject as S  # noqa: E402

DIFFUSION_STEPS = (2, 3, 4, 6, 8, 15)
LR_GRID, ITER_GRID = (3e-4, 1e-3, 3e-3), (100, 200)
TUNE_SEEDS = (0, 1)
PROMPT_SEED, CLASS_SEED, PER_REGION, N_CLASS = 7000, 8000, 4, 64
SCALARS = ("drift_fd", "agreement", "drift_fd_cfg0", "agreement_cfg0")  # per (subject, tuning seed)
KEYS = ("fidelity", "prompt", "diversity", "class_shape", "class_shape_cfg0")  # per-image figures (paired across variants)


def manager() -> ModelManager:
    m = ModelManager(device="cpu")
    m.register_zoo()
    return m


# ----------------------------------------------------------------------------------------------- speed

def speed(m: ModelManager, quick: bool) -> dict:
    prompts = evaluate.REPORT_PROMPTS[: 8 if quick else None] * (1 if quick else 2)
    texts = [c["prompt"] for c in prompts]
    real = shapes.to_model_range(shapes.make_dataset(1000, seed=424242)[0])
    rows = []
    with m.use("judge-shapes") as judge, m.use("fd-shapes") as fdnet, m.use("text-encoder") as enc:
        with m.use("var-shapes") as vm:
            cfg, k, p = (vm.info.get("default_cfg", 2.0), vm.info.get("default_top_k", 0),
                         vm.info.get("default_top_p", 0.0))
            evaluate.var_images(vm, enc, texts[:2], 0, cfg, k, p)  # warm-up
            t0 = time.perf_counter()
            x = evaluate.var_images(vm, enc, texts, 2000, cfg, k, p)
            sec = (time.perf_counter() - t0) / len(texts)
            rows.append({"model": "var-shapes", "sampler": f"next-scale, 6 passes, cfg {cfg}, top-k {k}, top-p {p}",
                         "passes": 6, **evaluate.shapes_quality(judge, fdnet, x, prompts, real, 50),
                         "seconds_per_image": sec})
        with m.use("shapes-t2i") as dm:
            cond, uncond = evaluate.prompt_conditions(texts, enc)
            scale = float(dm.info.get("default_guidance", 2.0))
            for steps in DIFFUSION_STEPS[:2] if quick else DIFFUSION_STEPS:
                t0 = time.perf_counter()
                parts = [evaluate.sample_batch(dm, {kk: v[i:i + 64] for kk, v in cond.items()},
                                               {kk: v[i:i + 64] for kk, v in uncond.items()}, scale,
                                               min(64, len(texts) - i), 2000 + i, steps, "dpm++")
                         for i in range(0, len(texts), 64)]
                sec = (time.perf_counter() - t0) / len(texts)
                x = torch.cat(parts)
                rows.append({"model": "shapes-t2i", "sampler": f"DPM-Solver++ {steps} steps, guidance {scale}",
                             "passes": 2 * steps, **evaluate.shapes_quality(judge, fdnet, x, prompts, real, 50),
                             "seconds_per_image": sec})
                print(f"shapes-t2i {steps} steps: region {rows[-1]['region']['value']:.3f}, {sec:.3f} s/img",
                      flush=True)
    var = rows[0]
    equal = next((r for r in rows[1:] if r["region"]["value"] >= var["region"]["value"]), None)
    return {"rows": rows, "threads": torch.get_num_threads(), "images": len(texts),
            "equal_quality": None if equal is None else {
                "diffusion": equal["sampler"], "var_seconds": var["seconds_per_image"],
                "diffusion_seconds": equal["seconds_per_image"],
                "speedup": equal["seconds_per_image"] / var["seconds_per_image"]}}


# --------------------------------------------------------------------------------------------- subject

def eval_model(model, enc, judge, fdnet, subject_x, shape, base_class, quick, class_seed: int = CLASS_SEED) -> dict:
    """Per-image figures of one model (see the module docstring)."""
    regions = list(range(9))
    per_region = 2 if quick else PER_REGION
    prompt_images, region_of = [], []
    p = S.Params(cfg=model.info.get("default_cfg", 2.0), top_k=model.info.get("default_top_k", 0),
                 top_p=model.info.get("default_top_p", 0.0))
    for r in regions:
        prompt = f"a sks {shape} at the {shapes.REGIONS[r]}"
        seeds = [PROMPT_SEED + 100 * r + i for i in range(per_region)]
        prompt_images.append(run_to_end(S.draw(model, enc, prompt, seeds, p)))
        region_of += [r] * per_region
    x = torch.cat(prompt_images)
    n_class = 8 if quick else N_CLASS
    cls = run_to_end(S.draw(model, enc, f"a {shape}", [class_seed + i for i in range(n_class)], p))
    per = S.per_image(judge, fdnet, subject_x, x, shape, region_of)
    div = [S.diversity(per["features"][i * per_region:(i + 1) * per_region]) for i in range(len(regions))]
    # the same class prompt without guidance: prior distillation protects the class prompt's logits, not the
    # empty caption's, which guidance (cfg 4: 5 cond - 4 uncond at the finest scale) amplifies
    plain = run_to_end(S.draw(model, enc, f"a {shape}", [class_seed + i for i in range(n_class)],
                              S.Params(cfg=0.0, top_k=p.top_k, top_p=p.top_p)))
    drift = S.class_drift(judge, cls, cls if base_class is None else base_class[0], shape)
    drift0 = S.class_drift(judge, plain, plain if base_class is None else base_class[1], shape)
    out = {"fidelity": per["fidelity"], "prompt": per["prompt"], "diversity": np.asarray(div),
           "class_shape": drift["class_shape"], "class_shape_cfg0": drift0["class_shape"], "class": (cls, plain)}
    if base_class is not None:
        out["agreement"] = drift["agreement"]["value"]
        out["drift_fd"] = S.drift_fd(fdnet, cls, base_class[0])
        out["agreement_cfg0"] = drift0["agreement"]["value"]
        out["drift_fd_cfg0"] = S.drift_fd(fdnet, plain, base_class[1])
    return out


def tune_one(vm, enc, subject_x, shape, variant: str, lr: float, iterations: int, seed: int):
    settings = A.TuneSettings(iterations=iterations, lr=lr, seed=seed)
    return run_to_end(A.tune(vm, enc, subject_x, shape, A.VARIANTS[variant], settings))


def choose_settings(m: ModelManager, quick: bool) -> dict:
    grid = [(LR_GRID[1], 3)] if quick else list(itertools.product(LR_GRID, ITER_GRID))
    rows = []
    with (m.use("var-shapes") as vm, m.use("text-encoder") as enc, m.use("judge-shapes") as judge,
          m.use("fd-shapes") as fdnet):
        for lr, iterations in grid:
            scores = []
            for sid in subjects.SELECTION:
                sub = subjects.get(sid)
                x = shapes.to_model_range(subjects.images(sub))
                tuned = tune_one(vm, enc, x, sub.shape, "arbooth", lr, iterations, 0)
                e = eval_model(tuned, enc, judge, fdnet, x, sub.shape, None, quick)
                scores.append((e["fidelity"].mean(), e["prompt"].mean()))
            fid, prm = np.mean(scores, 0)
            rows.append({"lr": lr, "iterations": iterations, "subject_fidelity": float(fid),
                         "prompt_fidelity": float(prm), "score": float(fid + prm)})
            print(f"selection lr {lr} iterations {iterations}: fidelity {fid:.3f} prompt {prm:.3f}", flush=True)
    best = max(rows, key=lambda r: r["score"])
    return {"grid": rows, "chosen": {"lr": best["lr"], "iterations": best["iterations"]},
            "subjects": list(subjects.SELECTION), "rule": "max subject fidelity + prompt fidelity, ARBooth, seed 0"}


def subject_part(m: ModelManager, quick: bool, selection: dict | None = None) -> dict:
    selection = selection or choose_settings(m, quick)
    lr, iterations = selection["chosen"]["lr"], selection["chosen"]["iterations"]
    variants = ("arbooth", "full") if quick else tuple(A.VARIANTS)
    seeds = TUNE_SEEDS[:1] if quick else TUNE_SEEDS
    per: dict[str, dict[str, list]] = {v: {} for v in ("base", *variants)}
    info: dict[str, dict] = {v: {k: [] for k in ("params", "seconds") + SCALARS} for v in variants}
    floor: dict[str, list] = {k: [] for k in SCALARS}
    with (m.use("var-shapes") as vm, m.use("text-encoder") as enc, m.use("judge-shapes") as judge,
          m.use("fd-shapes") as fdnet):
        for sid in subjects.REPORT:
            sub = subjects.get(sid)
            x = shapes.to_model_range(subjects.images(sub))
            base = eval_model(vm, enc, judge, fdnet, x, sub.shape, None, quick)
            for key in KEYS:  # once per subject: the untuned model has no seed
                per["base"].setdefault(key, []).append(base[key])
            # the floor: the untuned model against itself on other seeds (small sets differ by chance alone)
            again = eval_model(vm, enc, judge, fdnet, x, sub.shape, base["class"], quick, CLASS_SEED + 10_000)
            for k in SCALARS:
                floor[k].append(again[k])
            for seed in seeds:
                for v in variants:
                    tuned = tune_one(vm, enc, x, sub.shape, v, lr, iterations, seed)
                    e = eval_model(tuned, enc, judge, fdnet, x, sub.shape, base["class"], quick)
                    for key in KEYS:
                        per[v].setdefault(key, []).append(e[key])
                    info[v]["params"].append(tuned.info["trainable_params"])
                    info[v]["seconds"].append(tuned.info["tune_seconds"])
                    for k in SCALARS:
                        info[v][k].append(e[k])
                    print(f"{sid} seed {seed} {v}: fidelity {e['fidelity'].mean():.3f} prompt "
                          f"{e['prompt'].mean():.3f} class {e['class_shape'].mean():.3f} agreement {e['agreement']:.3f} "
                          f"drift FD {e['drift_fd']:.1f} (cfg 0: agreement {e['agreement_cfg0']:.3f}, FD "
                          f"{e['drift_fd_cfg0']:.1f}) diversity {e['diversity'].mean():.2f} "
                          f"({tuned.info['tune_seconds']:.0f} s)", flush=True)
    rows = []
    for v, parts in per.items():
        vals = {k: np.concatenate(a) for k, a in parts.items()}
        row = {"variant": v, **{k: metrics.bootstrap_mean(a).to_dict() for k, a in vals.items()}}
        source = floor if v == "base" else info[v]
        row.update({k: {"mean": float(np.mean(source[k])), "min": float(np.min(source[k])),
                        "max": float(np.max(source[k]))} for k in SCALARS})
        if v != "base":
            spread = {}
            row.update(trainable_params=int(np.mean(info[v]["params"])), tune_seconds=float(np.mean(info[v]["seconds"])),
                       **spread)
            if v != "arbooth":
                ref = {k: np.concatenate(a) for k, a in per["arbooth"].items()}
                row["minus_arbooth"] = {k: metrics.bootstrap_mean(vals[k] - ref[k]).to_dict() for k in vals}
        rows.append(row)
    return {"selection": selection, "rows": rows, "report_subjects": list(subjects.REPORT), "tune_seeds": list(seeds),
            "images": {"prompt": (2 if quick else PER_REGION) * 9, "class": 8 if quick else N_CLASS}}


# ----------------------------------------------------------------------------------------------- report

def ci(e: dict, pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def markdown(result: dict) -> str:
    lines = [f"# VAR and ARBooth at toy scale ({result['machine']}, {result['date']})", ""]
    sp = result.get("speed")
    if sp:
        lines += ["## Sampling: var-shapes vs shapes-t2i (REPORT prompts x 2, seeds 2000 + i)", "",
                  f"{sp['images']} images per row, {sp['threads']} threads, one process.", "",
                  "| model | sampler | network passes | shape+colour % | region % | FD-shapes | s / image |",
                  "|---|---|---|---|---|---|---|"]
        for r in sp["rows"]:
            lines.append(f"| {r['model']} | {r['sampler']} | {r['passes']} | {ci(r['shape_and_colour'], True)} | "
                         f"{ci(r['region'], True)} | {ci(r['fd_shapes'], False)} | {r['seconds_per_image']:.4f} |")
        eq = sp["equal_quality"]
        first = sp["rows"][1]["sampler"] if len(sp["rows"]) > 1 else None
        lines += ["", ("Equal quality: " + (f"{eq['diffusion']} is the fewest-step diffusion row whose region accuracy "
                                             f"reaches the VAR's; VAR {eq['var_seconds']:.4f} s vs "
                                             f"{eq['diffusion_seconds']:.4f} s per image (diffusion / VAR "
                                             f"{eq['speedup']:.2f})."
                                             + (" It is the sweep's fewest steps and already more accurate than the VAR, "
                                                "so no equal-quality point was reached: the VAR is quicker per image "
                                                "only at lower accuracy." if eq["diffusion"] == first else "")
                                             if eq else "no diffusion row reaches the VAR's region accuracy.")), ""]
    sb = result.get("subject")
    if sb:
        sel = sb["selection"]
        lines += ["## Subject tuning (ARBooth and its ablations)", "",
                  f"Selection ({', '.join(sel['subjects'])}; {sel['rule']}): chosen lr {sel['chosen']['lr']}, "
                  f"{sel['chosen']['iterations']} iterations.", "",
                  "| lr | iterations | subject fidelity | prompt fidelity |", "|---|---|---|---|"]
        lines += [f"| {r['lr']} | {r['iterations']} | {r['subject_fidelity']:.3f} | {r['prompt_fidelity']:.3f} |"
                  for r in sel["grid"]]
        lines += ["", f"Report: subjects {', '.join(sb['report_subjects'])} x tuning seeds {sb['tune_seeds']}; "
                  f"{sb['images']['prompt']} prompt images and {sb['images']['class']} class-prompt images per tuned "
                  "model.", "",
                  "| variant | subject fidelity | prompt fidelity % | class fidelity % | reading agreement (mean, min-max) "
                  "| drift FD (mean, min-max) | diversity | trainable params | s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sb["rows"]:
            fd, ag = r.get("drift_fd"), r.get("agreement")
            lines.append(f"| {r['variant']} | {ci(r['fidelity'])} | {ci(r['prompt'], True)} | "
                         f"{ci(r['class_shape'], True)} | "
                         + (f"{ag['mean']:.2f} ({ag['min']:.2f}-{ag['max']:.2f})" if ag else "1") + " | "
                         + (f"{fd['mean']:.1f} ({fd['min']:.1f}-{fd['max']:.1f})" if fd else "0") + " | "
                         f"{ci(r['diversity'])} | {r.get('trainable_params', 0):,} | {r.get('tune_seconds', 0):.0f} |")
        lines += ["", "Drift of the class prompt sampled without guidance (cfg 0; the same seeds): prior distillation "
                  "protects the class prompt's logits, not the empty caption's that guidance subtracts.", "",
                  "| variant | class fidelity % | reading agreement (mean, min-max) | drift FD (mean, min-max) |",
                  "|---|---|---|---|"]
        for r in sb["rows"]:
            fd, ag = r.get("drift_fd_cfg0"), r.get("agreement_cfg0")
            lines.append(f"| {r['variant']} | {ci(r['class_shape_cfg0'], True)} | "
                         + (f"{ag['mean']:.2f} ({ag['min']:.2f}-{ag['max']:.2f})" if ag else "1") + " | "
                         + (f"{fd['mean']:.1f} ({fd['min']:.1f}-{fd['max']:.1f})" if fd else "0") + " |")
        lines += ["", "Each variant minus ARBooth (paired on prompts and seeds; an interval covering 0 is no difference):",
                  "", "| variant | subject fidelity | prompt fidelity % | class fidelity % | class fidelity, cfg 0 % | "
                  "diversity |", "|---|---|---|---|---|---|"]
        for r in sb["rows"]:
            d = r.get("minus_arbooth")
            if d:
                lines.append(f"| {r['variant']} | {ci(d['fidelity'])} | {ci(d['prompt'], True)} | "
                             f"{ci(d['class_shape'], True)} | {ci(d['class_shape_cfg0'], True)} | "
                             f"{ci(d['diversity'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "speed", "subject"), default="all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reuse-selection", action="store_true",
                    help="take the learning rate and iterations from the last results' selection (not chosen again)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = manager()
    old = json.loads((RESULTS / "subject.json").read_text()) if (RESULTS / "subject.json").exists() else {}
    result = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              "speed": old.get("speed"), "subject": old.get("subject")}
    if args.part in ("all", "speed"):
        result["speed"] = speed(m, args.quick)
    if args.part in ("all", "subject"):
        kept = (old.get("subject") or {}).get("selection") if args.reuse_selection else None
        result["subject"] = subject_part(m, args.quick, kept)
    text = markdown(result)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "subject.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (RESULTS / "subject.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
