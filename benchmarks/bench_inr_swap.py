"""Resolution-free rendering (DDMI) and the guided object swap (LDFaceNet's guidance design), at toy scale.

Part **resolution** (``ddmi-shapes`` and its D2C-VAE ablations, :data:`studio.train.ddmi.VAE_VARIANTS`): the
REPORT scenes (seeds 5000 + i) are encoded (posterior mean) and rendered at 32 (reconstruction) and at 64, 128
and 256, each measured against the shapes world's true render at that size (PSNR, colour-mask IoU, edge
sharpness; :mod:`studio.methods.resolution`). Beside them, at each size: bicubic upsampling of the model's own
32-pixel render (the same information, interpolated instead of re-rendered: this isolates the rendering) and of
the true 32-pixel render (the best any 32-pixel image can do by interpolation). Rows per D2C-VAE: ``ddmi`` (the
shipped one: three planes, scale injection), ``fine`` (one fine plane for every block), ``fourier`` (a fixed
Fourier PE and a latent-modulated MLP), ``no-si`` (no scale injection); each is trained by the same recipe
(``studio train ddmi-shapes --variant NAME``, kept in ``runs/``). Nothing is chosen here, so there is no
selection set. Intervals: 95% bootstrap over scenes; differences are paired on the scenes.

Part **generation**: the shipped model's 32-pixel samples, guidance chosen on the SELECTION prompts, measured on
the REPORT prompts x 2 (judge accuracy, FD-shapes; :func:`studio.evaluate.evaluate_ddmi`), beside ``shapes-t2i``'s
zoo figures on the same prompts and seeds.

Part **swap** (:mod:`studio.methods.swap`): tasks drawn from seeds (a scene of 2 or 3 objects, one object, a new
shape, colour or both). The settings are chosen on the SELECTION tasks (seeds 100 + i), separately for each regime: the two
guidance weights (a grid of what x where) by the rate at which the judge reads the asked object in the asked cell,
ties broken by the smaller centroid shift, at classifier-free scale 2 (the model's default) and at scale 0 (the
unconditional model: the caption no longer draws the asked object, so only the guidance can); SDEdit's strength by
the asked rate plus the other-cells rate. Every variant is then run on the REPORT tasks (seeds 1000 + i) with the
same noise seed per task, at scale 2 (all six) and at scale 0 (the four blended ones). Per variant: the
asked object in its cell, the other eight cells read as in the original (all eight; the blended variants keep them
by construction, so this figure speaks only for SDEdit and compose), the PSNR outside the cell, the shift of the
cell's foreground centroid and the |log| of its area ratio (where the new object sits). LDFaceNet minus each other
variant is paired on the tasks; an interval covering 0 is "no difference".

``python benchmarks/bench_inr_swap.py`` writes ``benchmarks/results/inr_swap.json`` / ``.md``; ``--part
resolution|generation|swap`` runs one part (the others' figures are kept); ``--quick``: a smoke run, nothing written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.manager import ModelManager
from studio.data import shapes
from studio.methods import resolution as R
from studio.methods import swap as S
from studio.train.common import machine_description

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (32, 64, 128, 256)
VARIANTS = ("ddmi", "fine", "fourier", "no-si")
SWAP_VARIANTS = ("ldfacenet", "inpaint", "what-only", "where-only", "sdedit", "compose")
WHAT_GRID = (0.5, 32.0, 512.0)
WHERE_GRID = (2.0, 8.0, 32.0)
SDEDIT_GRID = (0.4, 0.6, 0.8)


def manager() -> ModelManager:
    m = ModelManager(device="cpu")
    m.register_zoo()
    return m


def est(values) -> dict:
    return metrics.bootstrap_mean(np.asarray(values, dtype=np.float64)).to_dict()


def diff(a, b) -> dict:
    return metrics.bootstrap_difference(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).to_dict()


# ----------------------------------------------------------------------------- resolution

@torch.no_grad()
def resolution_part(m: ModelManager, n: int) -> dict:
    from studio.train import ddmi

    scenes = [shapes.random_scene(np.random.default_rng(5000 + i)) for i in range(n)]
    truth = {s: torch.cat([R.true_render(sc, s) for sc in scenes]) for s in SIZES}
    per: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    available = []
    for variant in VARIANTS:
        try:
            vae = ddmi.load_variant("" if variant == "ddmi" else variant)
        except FileNotFoundError as exc:
            print(f"skip {variant}: {exc}", flush=True)
            continue
        available.append(variant)
        z = torch.cat([vae.encode(truth[32][i:i + 64]).mean for i in range(0, n, 64)])
        renders = {s: torch.cat([vae.render(z[i:i + 32], s).clamp(-1, 1) for i in range(0, n, 32)]) for s in SIZES}
        per[variant] = {s: R.readout(renders[s], truth[s]) for s in SIZES}
        if variant == "ddmi":
            per["bicubic of ddmi's 32 px"] = {s: R.readout(R.bicubic(renders[32], s), truth[s]) for s in SIZES}
    per["bicubic of the true 32 px"] = {s: R.readout(R.bicubic(truth[32], s), truth[s]) for s in SIZES}
    rows = []
    for name, by_size in per.items():
        for s in SIZES:
            if name.startswith("bicubic") and s == 32:
                continue
            row = {"render": name, "size": s, **{k: est(v[np.isfinite(v)]) for k, v in by_size[s].items()}}
            if "ddmi" in per and name != "ddmi":
                row["ddmi_minus_this"] = {k: diff(per["ddmi"][s][k], v) for k, v in by_size[s].items()
                                          if np.isfinite(v).all() and np.isfinite(per["ddmi"][s][k]).all()}
            rows.append(row)
            print(f"{name} {s}: PSNR {row['psnr']['value']:.2f}, IoU {row['colour_iou']['value']:.3f}, "
                  f"sharpness {row['edge_sharpness']['value']:.3f}", flush=True)
    return {"rows": rows, "variants": available, "report_set": f"{n} scenes, seeds 5000 + i",
            "sizes": list(SIZES)}


# ----------------------------------------------------------------------------- swap

def swap_task(seed: int) -> S.SwapTask:
    rng = np.random.default_rng(seed)
    scene = shapes.random_scene(rng, n_objects=int(rng.integers(2, 4)))
    index = int(rng.integers(len(scene.objects)))
    o = scene.objects[index]
    change = ("shape", "colour", "both")[int(rng.integers(3))]
    shape = o.shape if change == "colour" else str(rng.choice([s for s in shapes.SHAPES if s != o.shape]))
    colour = o.colour if change == "shape" else str(rng.choice([c for c in shapes.COLOURS if c != o.colour]))
    return S.SwapTask(scene, index, shape, colour)


def run_tasks(m: ModelManager, seeds: list[int], variants, what: float, where: float, strength: float,
              steps: int, guidance: float) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {v: [] for v in variants}
    with (m.use(S.MODEL) as dm, m.use(S.CLASSIFIER) as clip, m.use("text-encoder") as enc,
          m.use(S.JUDGE) as judge):
        for seed in seeds:
            task = swap_task(seed)
            swapper = S.Swapper(dm, clip, enc, task, guidance, steps)
            for variant in variants:
                with torch.no_grad():
                    x = [item for item in swapper.run(variant, seed, strength, what, where)][-1].clamp(-1, 1)
                out[variant].append(S.readout(judge, swapper.x, x, task))
    return out


def summarise(rows: list[dict]) -> dict:
    return {"asked_in_cell": est([r["asked_in_cell"] for r in rows]),
            "all_others_kept": est([r["all_others_kept"] for r in rows]),
            "psnr_outside": est([min(r["psnr_outside"], 100.0) for r in rows]),
            "centroid_shift_px": est([r["centroid_shift_px"] for r in rows]),
            "log_area_ratio": est([abs(np.log(max(r["area_ratio"], 1e-3))) for r in rows])}


def choose_weights(m: ModelManager, seeds: list[int], steps: int, guidance: float) -> tuple[dict, list[dict]]:
    """(what, where) for LDFaceNet's guidance at classifier-free ``guidance``, on the selection ``seeds``: the
    highest asked-in-cell rate, ties broken by the smaller centroid shift."""
    rows = []
    for what in WHAT_GRID:
        for where in WHERE_GRID:
            s = summarise(run_tasks(m, seeds, ("ldfacenet",), what, where, 0.6, steps, guidance)["ldfacenet"])
            rows.append({"what": what, "where": where, "guidance": guidance, **s})
            print(f"selection guidance {guidance}, what {what}, where {where}: asked {s['asked_in_cell']['value']:.3f}, "
                  f"shift {s['centroid_shift_px']['value']:.2f}", flush=True)
    best = max(rows, key=lambda r: (round(r["asked_in_cell"]["value"], 3), -r["centroid_shift_px"]["value"]))
    return {"what": best["what"], "where": best["where"]}, rows


def report_rows(report: dict[str, list[dict]], variants) -> list[dict]:
    rows = []
    for v in variants:
        row = {"variant": v, "label": S.VARIANTS[v], **summarise(report[v])}
        if v != "ldfacenet":
            a, b = report["ldfacenet"], report[v]
            row["ldfacenet_minus_this"] = {
                "asked_in_cell": diff([r["asked_in_cell"] for r in a], [r["asked_in_cell"] for r in b]),
                "centroid_shift_px": diff([r["centroid_shift_px"] for r in a], [r["centroid_shift_px"] for r in b])}
        rows.append(row)
        print(f"report {v}: asked {row['asked_in_cell']['value']:.3f}, others {row['all_others_kept']['value']:.3f}, "
              f"PSNR outside {row['psnr_outside']['value']:.1f}, shift {row['centroid_shift_px']['value']:.2f}",
              flush=True)
    return rows


def swap_part(m: ModelManager, n_select: int, n_report: int, steps: int = 25, guidance: float = 2.0) -> dict:
    select_seeds = [100 + i for i in range(n_select)]
    report_seeds = [1000 + i for i in range(n_report)]
    chosen, selection = choose_weights(m, select_seeds, steps, guidance)
    chosen0, selection0 = choose_weights(m, select_seeds, steps, 0.0)
    sd_selection = []
    for strength in SDEDIT_GRID:
        s = summarise(run_tasks(m, select_seeds, ("sdedit",), 0, 0, strength, steps, guidance)["sdedit"])
        sd_selection.append({"strength": strength, **s})
        print(f"selection sdedit {strength}: asked {s['asked_in_cell']['value']:.3f}, others "
              f"{s['all_others_kept']['value']:.3f}", flush=True)
    sd_best = max(sd_selection, key=lambda r: (round(r["asked_in_cell"]["value"] + r["all_others_kept"]["value"], 3)))
    t0 = time.perf_counter()
    report = run_tasks(m, report_seeds, SWAP_VARIANTS, chosen["what"], chosen["where"], sd_best["strength"], steps,
                       guidance)
    seconds = time.perf_counter() - t0
    rows = report_rows(report, SWAP_VARIANTS)
    # without the caption's pull (classifier-free scale 0: the unconditional model), only the guidance says what
    # to draw: the regime that shows what the classifier term does on its own (its weights chosen at scale 0)
    blind = run_tasks(m, report_seeds, SWAP_VARIANTS[:4], chosen0["what"], chosen0["where"], 0.6, steps, 0.0)
    return {"chosen": {**chosen, "sdedit_strength": sd_best["strength"]}, "chosen_guidance_0": chosen0,
            "selection": selection, "selection_guidance_0": selection0, "sdedit_selection": sd_selection,
            "rows": rows, "rows_guidance_0": report_rows(blind, SWAP_VARIANTS[:4]),
            "sampler": f"ddim {steps} steps, classifier-free guidance {guidance}",
            "selection_set": f"{n_select} tasks, seeds 100 + i", "report_set": f"{n_report} tasks, seeds 1000 + i",
            "report_seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------- output

def ci(e: dict, nd: int = 3, pct: bool = False) -> str:
    k = 100 if pct else 1
    nd = 1 if pct else nd
    return f"{k * e['value']:.{nd}f} [{k * e['low']:.{nd}f}, {k * e['high']:.{nd}f}]"


def markdown(result: dict) -> str:
    lines = [f"# DDMI resolution and LDFaceNet-style swap ({result['machine']}, {result['date']})", ""]
    res = result.get("resolution")
    if res:
        lines += ["## Resolution: renders against the true render", "", f"Report set: {res['report_set']}.", "",
                  "| render | size | PSNR dB | colour IoU | edge sharpness | DDMI minus this: PSNR | DDMI minus this: "
                  "sharpness |", "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            d = r.get("ddmi_minus_this", {})
            lines.append(f"| {r['render']} | {r['size']} | {ci(r['psnr'], 2)} | {ci(r['colour_iou'])} | "
                         f"{ci(r['edge_sharpness'])} | {ci(d['psnr'], 2) if 'psnr' in d else ''} | "
                         f"{ci(d['edge_sharpness']) if 'edge_sharpness' in d else ''} |")
    gen = result.get("generation")
    if gen:
        a, t = gen["ddmi"], gen.get("shapes_t2i")
        lines += ["", "## Generation at 32 px", "", f"Selection: {a['selection_set']}; report: {a['report_set']}.", "",
                  "| model | sampler | shape+colour | region | FD-shapes |", "|---|---|---|---|---|",
                  f"| ddmi-shapes | {a['sampler']}, guidance {a['chosen_guidance']} | "
                  f"{ci(a['at_chosen']['shape_and_colour'])} | {ci(a['at_chosen']['region'])} | "
                  f"{ci(a['at_chosen']['fd_shapes'], 1)} |"]
        if t:
            lines.append(f"| shapes-t2i (zoo figures) | {t['sampler']} | {ci(t['shape_and_colour'])} | "
                         f"{ci(t['region'])} | {ci(t['fd_shapes'], 1)} |")
    sw = result.get("swap")
    if sw:
        c = sw["chosen"]
        lines += ["", "## Swap", "", f"Selection: {sw['selection_set']}; report: {sw['report_set']}; {sw['sampler']}; "
                  f"chosen: what {c['what']}, where {c['where']}, SDEdit strength {c['sdedit_strength']}.", "",
                  "Selection (LDFaceNet's guidance, asked-in-cell rate / centroid shift): " + ", ".join(
                      f"what {r['what']:g} where {r['where']:g}: {100 * r['asked_in_cell']['value']:.0f}% / "
                      f"{r['centroid_shift_px']['value']:.2f} px" for r in sw["selection"]) + ".", "",
                  "| variant | asked in the cell % | all other cells kept % | PSNR outside dB | centroid shift px | "
                  "abs log area ratio | LDFaceNet minus this: asked % |", "|---|---|---|---|---|---|---|"]
        for r in sw["rows"]:
            d = r.get("ldfacenet_minus_this")
            lines.append(f"| {r['variant']} | {ci(r['asked_in_cell'], pct=True)} | {ci(r['all_others_kept'], pct=True)}"
                         f" | {ci(r['psnr_outside'], 1)} | {ci(r['centroid_shift_px'], 2)} | "
                         f"{ci(r['log_area_ratio'], 3)} | {ci(d['asked_in_cell'], pct=True) if d else ''} |")
        c0 = sw.get("chosen_guidance_0", {})
        lines += ["", "The same report tasks with classifier-free guidance 0 (the unconditional model: only the guidance "
                  f"says what to draw; weights chosen at guidance 0 on the selection tasks: what {c0.get('what')}, "
                  f"where {c0.get('where')}; selection: " + ", ".join(
                      f"what {r['what']:g} where {r['where']:g}: {100 * r['asked_in_cell']['value']:.0f}%"
                      for r in sw.get("selection_guidance_0", [])) + "):", "",
                  "| variant | asked in the cell % | centroid shift px | LDFaceNet minus this: asked % |",
                  "|---|---|---|---|"]
        for r in sw.get("rows_guidance_0", []):
            d = r.get("ldfacenet_minus_this")
            lines.append(f"| {r['variant']} | {ci(r['asked_in_cell'], pct=True)} | {ci(r['centroid_shift_px'], 2)} | "
                         f"{ci(d['asked_in_cell'], pct=True) if d else ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "resolution", "generation", "swap"), default="all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = manager()
    path = RESULTS / "inr_swap.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    result = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
              **{k: old.get(k) for k in ("resolution", "generation", "swap")}}
    if args.part in ("all", "resolution"):
        result["resolution"] = resolution_part(m, 8 if args.quick else 200)
    if args.part in ("all", "generation"):
        from studio import evaluate
        from studio.core.loading import read_manifest

        ddmi = evaluate.evaluate_ddmi(m, repeats=1 if args.quick else 2)
        t2i = read_manifest()["shapes-t2i"]["quality"].get("at_tab_default")
        result["generation"] = {"ddmi": ddmi, "shapes_t2i": t2i}
    if args.part in ("all", "swap"):
        result["swap"] = swap_part(m, 2 if args.quick else 24, 3 if args.quick else 60, steps=5 if args.quick else 25)
    if not args.quick and path.exists():  # another part may have finished meanwhile: keep what it wrote
        latest = json.loads(path.read_text())
        ran = {"resolution", "generation", "swap"} if args.part == "all" else {args.part}
        result.update({k: latest.get(k) for k in ("resolution", "generation", "swap") if k not in ran})
    text = markdown(result)
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
        (RESULTS / "inr_swap.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
