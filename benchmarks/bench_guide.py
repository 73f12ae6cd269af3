"""Guide benchmark: classifier guidance of ``digits-cond`` used unconditionally, side by side.

Methods (see :mod:`studio.methods.guide`): the noise-aware classifier (Dhariwal & Nichol), the
off-the-shelf clean classifier on x_t (naive), the same clean classifier with EluCD's tricks,
PPAP's 5 LoRA experts (data-free), 5 fully fine-tuned experts, and classifier-free guidance of
the conditional model as the reference. Every classifier here is trained by the Guide recipes;
none is a judge.

For each method the scale is swept; each point is ``PER_CLASS`` images of every class (image
(c, i) from seed 7000 + 100 c + i, the same noise for every method), ancestral DDPM with 50
steps (EluCD's official runs use 250 respaced DDPM steps; 50 to fit a CPU). Measured per point:

* accuracy: the share ``judge-digits`` reads as the asked class (95% bootstrap interval);
* FD-digits per class: ``fd-digits`` features of the samples of class c against the test digits
  of class c, averaged over the classes. With 20 samples against ~36 test digits in 64
  dimensions this carries a large small-sample bias; its floor (20 *training* digits of each
  class against that class's test digits, the same sizes) is printed beside it;
* diversity: mean pairwise feature distance within each class, over the same for the test digits
  of that class (1 = as varied as real digits; low = mode collapse);
* seconds per image (2 CPU threads, batch of 200) and the trainable parameters of the method.

Also: the EluCD ablation ladder (naive -> + x0_hat -> + Softplus -> + temperatures -> + sine),
each rung swept and shown at its best scale; the clean classifier's accuracy on x_t and on x0_hat
against noise level (EluCD's calibration argument); and the DDIM placement at 25 steps.
"Best scale" = the highest judge accuracy, ties to the lower FD.

Writes ``benchmarks/results/guide.json``, ``guide.md`` and ``guide_sweep.html``.
Run: ``python benchmarks/bench_guide.py [--quick]`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.loading import load_zoo, read_manifest
from studio.data import digits
from studio.methods import guide
from studio.nets.classifiers import parameter_count
from studio.train.common import RUNS_DIR, machine_description

ROOT = Path(__file__).resolve().parent
SEED = 7000
STEPS = 50
DDIM_STEPS = 25
PER_CLASS = 20
SWEEPS = {  # wide enough to find each method's best (a pilot of 50 images set the first ranges;
    # noise-aware, PPAP and the experts peaked at the top of 1..16 and were extended)
    "cfg": (1.0, 1.5, 2.0, 3.0),
    "noise-aware": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
    "naive": (2.0, 8.0, 32.0, 128.0),
    "elucd": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),  # also every rung of the ablation ladder
    "ppap": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
    "experts": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
}
CHUNK = 200


class Bench:
    def __init__(self, per_class: int):
        self.classifiers = {}
        self.labels = torch.arange(10).repeat_interleave(per_class)
        self.seeds = [SEED + 100 * int(c) + i for c in range(10) for i in range(per_class)]
        test = digits.load("test")
        train = digits.load("train")
        self.dm = load_zoo(guide.MODEL)
        self.judge = load_zoo(guide.JUDGE)
        self.fdnet = load_zoo("fd-digits")
        self.test_feats = {c: metrics.features(self.fdnet, torch.from_numpy(test.images[test.labels == c]))
                           for c in range(10)}
        rng = np.random.default_rng(0)
        floor_feats = {c: metrics.features(self.fdnet, torch.from_numpy(
            train.images[rng.choice(np.flatnonzero(train.labels == c), per_class, replace=False)])) for c in range(10)}
        self.floor = self.fd_and_diversity(floor_feats)

    def fd_and_diversity(self, feats: dict[int, np.ndarray]) -> dict:
        fds, div = [], []
        for c, f in feats.items():
            ref = self.test_feats[c]
            fds.append(metrics.frechet_distance(*metrics.gaussian_stats(f), *metrics.gaussian_stats(ref)))
            div.append(_mean_pairwise(f) / _mean_pairwise(ref))
        return {"fd_per_class": round(float(np.mean(fds)), 2), "diversity": round(float(np.mean(div)), 3)}

    def point(self, method: str, scale: float, tricks=guide.NONE, sampler="ddpm", steps=STEPS) -> dict:
        """One sweep point; cached in runs/bench-cache (keyed by every input and the zoo files it
        reads) so a stopped run resumes where it was."""
        key = hashlib.sha256(json.dumps([method, scale, repr(tricks), sampler, steps, len(self.labels), self.seeds[:3],
                                         _zoo_files(guide.MODEL, guide.CLASSIFIER_OF.get(method))]).encode()).hexdigest()
        cache = RUNS_DIR / "bench-cache" / f"guide-{key[:20]}.json"
        if cache.exists():
            row = json.loads(cache.read_text())
        else:
            row = self._point(method, scale, tricks, sampler, steps)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(row))
        print(f"  {method:12s} {sampler} s={scale:<5g} acc {row['accuracy']['value']:.3f}  FD/class "
              f"{row['fd_per_class']:.2f}  div {row['diversity']:.2f}  {row['seconds_per_image']:.3f} s/img", flush=True)
        return row

    def _point(self, method: str, scale: float, tricks, sampler: str, steps: int) -> dict:
        name = guide.CLASSIFIER_OF.get(method)
        if name and name not in self.classifiers:
            self.classifiers[name] = load_zoo(name)
        classifier = self.classifiers.get(name)
        t0 = time.perf_counter()
        x = torch.cat([guide.generate(self.dm, method, self.labels[i:i + CHUNK], self.seeds[i:i + CHUNK], scale,
                                      sampler=sampler, steps=steps, tricks=tricks, classifier=classifier)
                       for i in range(0, len(self.labels), CHUNK)])
        seconds = time.perf_counter() - t0
        acc = metrics.digits_accuracy(self.judge, x, self.labels.numpy())
        feats = metrics.features(self.fdnet, x)
        by_class = {c: feats[(self.labels == c).numpy()] for c in range(10)}
        return {"scale": scale, "accuracy": acc.to_dict(), **self.fd_and_diversity(by_class),
                "seconds_per_image": round(seconds / len(x), 4)}

    def sweep(self, method: str, scales, tricks=guide.NONE, sampler="ddpm", steps=STEPS) -> dict:
        rows = [self.point(method, s, tricks, sampler, steps) for s in scales]
        return {"sweep": rows, "best": best(rows)}


def _zoo_files(*names) -> list:
    m = read_manifest()
    return [m.get(n, {}).get("files") for n in (*names, guide.JUDGE, "fd-digits") if n]


def _mean_pairwise(f: np.ndarray) -> float:
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(f), 1)].mean())


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["accuracy"]["value"], -r["fd_per_class"]))


def trainable() -> dict:
    """Parameters each method trains for guidance, from the zoo MANIFEST (and the live modules)."""
    info = read_manifest().get
    clean = parameter_count(load_zoo("guide-clean"))
    ppap = info("guide-ppap")
    experts = info("guide-experts")
    return {
        "cfg": {"trainable": parameter_count(load_zoo(guide.MODEL).unet), "note": "the conditional UNet itself"},
        "noise-aware": {"trainable": parameter_count(load_zoo("guide-noisy"))},
        "naive": {"trainable": 0, "classifier": clean, "note": "off-the-shelf, trained on clean digits only"},
        "elucd": {"trainable": 0, "classifier": clean, "note": "off-the-shelf, trained on clean digits only"},
        "ppap": {"trainable": ppap.get("trainable_params"), "per_expert": ppap.get("trainable_params_per_expert")},
        "experts": {"trainable": experts.get("trainable_params"), "per_expert": experts.get("trainable_params_per_expert")},
    }


def by_bin() -> dict:
    """Each guiding classifier's accuracy on test digits noised to t uniform in each fifth of [0, 1000)
    (for the expert banks, expert i on bin i), as its recipe measured it (MANIFEST quality)."""
    m = read_manifest()
    return {name: m[name]["quality"]["noised_test_accuracy_by_bin"]
            for name in ("guide-clean", "guide-noisy", "guide-ppap", "guide-experts") if name in m}


def calibration(dm) -> list[dict]:
    rows = guide.accuracy_by_noise(dm, load_zoo("guide-clean"), load_zoo("guide-noisy"))
    for r in rows:
        print(f"  t={r['t']:4d}  clean(x_t) {r['clean_on_x_t']:.3f}  clean(x0_hat) {r['clean_on_x0_hat']:.3f}  "
              f"noise-aware(x_t) {r['noise_aware_on_x_t']:.3f}", flush=True)
    return rows


def plot(results: dict, path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, r in results["methods"].items():
        rows = r["sweep"]
        fig.add_trace(go.Scatter(x=[row["fd_per_class"] for row in rows], y=[row["accuracy"]["value"] for row in rows],
                                 mode="lines+markers", name=guide.METHOD_LABELS[name],
                                 text=[f"s = {row['scale']:g}" for row in rows]))
    fig.update_layout(title="Guidance on digits-cond: judge accuracy vs FD-digits per class (each point a scale)",
                      xaxis_title="FD-digits per class (lower is better)", yaxis_title="judge accuracy on the asked class",
                      template="plotly_white")
    fig.write_html(path, include_plotlyjs="cdn")


def fmt(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(r: dict) -> str:
    p = r["trainable_params"]
    lines = [f"# Guide benchmark ({r['machine']}, {r['date']})", "",
             f"digits-cond used unconditionally (null class); ancestral DDPM, {r['steps']} steps; "
             f"{r['images_per_point']} images per point ({r['per_class']} per class); judge-digits and fd-digits "
             "were trained apart from every guiding classifier.", "",
             f"FD-digits floor at this sample size (20 training digits per class vs the test digits): "
             f"{r['floor']['fd_per_class']:.2f}; diversity of those training digits: {r['floor']['diversity']:.2f}.", "",
             "| method | best scale | judge accuracy [95% CI] | FD-digits / class | diversity | s / image | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        b = m["best"]
        lines.append(f"| {guide.METHOD_LABELS[name]} | {b['scale']:g} | {fmt(b['accuracy'])} | {b['fd_per_class']:.2f} | "
                     f"{b['diversity']:.2f} | {b['seconds_per_image']:.3f} | {p[name]['trainable']:,} |")
    lines += ["", "## EluCD ablation (off-the-shelf classifier, each rung at its best scale)", "",
              "| rung | best scale | judge accuracy [95% CI] | FD-digits / class | diversity |", "|---|---|---|---|---|"]
    for rung in r["ladder"]:
        b = rung["best"]
        lines.append(f"| {rung['rung']} | {b['scale']:g} | {fmt(b['accuracy'])} | {b['fd_per_class']:.2f} | {b['diversity']:.2f} |")
    if r.get("ddim"):
        lines += ["", f"## DDIM placement ({DDIM_STEPS} steps, at each method's DDPM best scale)", "",
                  "| method | scale | judge accuracy [95% CI] | FD-digits / class |", "|---|---|---|---|"]
        for name, row in r["ddim"].items():
            lines.append(f"| {name} | {row['scale']:g} | {fmt(row['accuracy'])} | {row['fd_per_class']:.2f} |")
    lines += ["", "## The clean classifier on x_t vs on x0_hat (test digits noised to t)", "",
              "| t | clean on x_t | clean on x0_hat | noise-aware on x_t |", "|---|---|---|---|"]
    for row in r["calibration"]:
        lines.append(f"| {row['t']} | {row['clean_on_x_t']:.3f} | {row['clean_on_x0_hat']:.3f} | {row['noise_aware_on_x_t']:.3f} |")
    lines += ["", "## Classifier accuracy on noised test digits, by timestep bin (from the recipes)", "",
              "| classifier | " + " | ".join(f"t in bin {i}" for i in range(5)) + " |", "|---" * 6 + "|"]
    for name, accs in r["by_bin"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    lines += ["", "## Sweeps", "", "| method | scale | accuracy | FD / class | diversity |", "|---|---|---|---|---|"]
    for name, m in r["methods"].items():
        for row in m["sweep"]:
            lines.append(f"| {name} | {row['scale']:g} | {row['accuracy']['value']:.3f} | {row['fd_per_class']:.2f} | "
                         f"{row['diversity']:.2f} |")
    lines += ["", "## Goals", ""] + [f"- {g}" for g in r["goals"]]
    return "\n".join(lines) + "\n"


def goals(r: dict) -> list[str]:
    m = r["methods"]
    el, nv, na, pp = (m[k]["best"] for k in ("elucd", "naive", "noise-aware", "ppap"))
    gap = el["accuracy"]["value"] - nv["accuracy"]["value"]
    out = [f"EluCD beats naive by >= 30 points: {gap * 100:+.1f} points -> {'met' if gap >= 0.30 else 'MISSED'}"]
    # met iff some EluCD point reaches noise-aware's best accuracy at an FD no worse than that point's
    rivals = [row for row in m["elucd"]["sweep"] if row["accuracy"]["value"] >= na["accuracy"]["value"] - 1e-9]
    low_fd = min((row["fd_per_class"] for row in rivals), default=None)
    matched = low_fd is not None and low_fd <= na["fd_per_class"]
    out.append(f"EluCD matches or beats noise-aware on accuracy at equal or better FD: noise-aware's best is "
               f"{na['accuracy']['value']:.3f} at FD {na['fd_per_class']:.2f} (s = {na['scale']:g}); EluCD's lowest FD "
               f"at that accuracy or better: {'none' if low_fd is None else f'{low_fd:.2f}'} -> "
               f"{'met' if matched else 'MISSED'}")
    p = r["trainable_params"]
    ratio = p["ppap"]["trainable"] / p["experts"]["trainable"]
    out.append(f"PPAP (5 LoRA experts) >= 90% accuracy: {pp['accuracy']['value']:.3f} -> "
               f"{'met' if pp['accuracy']['value'] >= 0.9 else 'MISSED'}; with < 20% of 5 full experts' parameters: "
               f"{ratio * 100:.1f}% -> {'met' if ratio < 0.2 else 'MISSED'}")
    return out


def main(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    per_class = 4 if quick else PER_CLASS
    bench = Bench(per_class)
    sweeps = {k: (v[1:3] if quick else v) for k, v in SWEEPS.items()}
    print("calibration", flush=True)
    calib = calibration(bench.dm)
    methods = {}
    for name in ("cfg", "noise-aware", "naive", "elucd", "ppap", "experts"):
        print(name, flush=True)
        methods[name] = bench.sweep(name, sweeps[name], guide.Tricks() if name == "elucd" else guide.NONE)
    ladder = []
    for label, tricks in guide.LADDER:
        if tricks == guide.NONE:
            res = methods["naive"]
        elif tricks == guide.Tricks():
            res = methods["elucd"]
        else:
            print(label, flush=True)
            res = bench.sweep("elucd", sweeps["elucd"], tricks)
        ladder.append({"rung": label, **res})
    print("ddim", flush=True)
    ddim = {}
    for name, tricks in (("noise-aware", guide.NONE), ("elucd", guide.Tricks()),
                         ("elucd without sine", guide.Tricks(sine=False)), ("ppap", guide.NONE)):
        key = name.split()[0]
        ddim[name] = bench.point(key, methods[key]["best"]["scale"], tricks, "ddim", DDIM_STEPS)
    result = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "steps": STEPS,
              "per_class": per_class, "images_per_point": 10 * per_class, "floor": bench.floor,
              "methods": methods, "ladder": ladder, "ddim": ddim, "calibration": calib,
              "trainable_params": trainable(), "by_bin": by_bin(), "quick": quick}
    result["goals"] = goals(result)
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    suffix = "_quick" if quick else ""
    (out / f"guide{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"guide{suffix}.md").write_text(markdown(result))
    if not quick:
        plot(result, out / "guide_sweep.html")
    print(markdown(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 images per class, two scales per method")
    main(**vars(parser.parse_args()))
