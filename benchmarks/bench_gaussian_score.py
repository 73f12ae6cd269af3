"""The Gaussian-score diagnostic (issue 22): how much of each zoo model's learned denoiser the
closed-form references explain, per noise level (Wang & Vastola, TMLR 2024, their central plot;
the official ``analysis/EDM_GMM_score_cmp_mass_CLI.py``).

For each model, its unconditional branch (the null class / the empty prompt, which the models were
trained with as condition dropout) is held against :mod:`studio.core.analytic`'s references: the
data mean, the data's Gaussian (the shipped ``gaussian.safetensors``), a 10-cluster Gaussian
mixture of the training set, and the training set's delta mixture. The measure is the official
per-sample explained variance, in score space (the paper's plot) and in denoiser space, averaged
over held-out images with a 95 % bootstrap interval.

* ``digits-cond``: the 360 test digits noised (seed 7); references from the 1,437 training digits.
* ``shapes-t2i``: 256 held-out renders (``shapes.make_dataset(256, seed=515151)``) noised (seed 7);
  references from the 20,000 recipe scenes the Gaussian was fitted on (``studio train shapes-t2i
  --gaussian-stats``), the mixture's clusters at rank 256 plus residual.

Reported: the lowest noise level from which on the Gaussian explains at least 90 % of the learned
score (the issue's measure), with the mean's level beside it (what comes for free).

Run: ``python benchmarks/bench_gaussian_score.py`` (about 10 minutes on one core) writes
``benchmarks/results/gaussian_score.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from studio.core import analytic
from studio.core.conditioning import repeat, zoo_text_kwargs
from studio.core.loading import load_zoo
from studio.core.sampling import make_scheduler, predicted_x0
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
TIMESTEPS = (10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 990)
THRESHOLD = 0.9
NOISE_SEED = 7


def model_and_data(name: str, quick: bool):
    from studio.train.gaussian import training_samples

    dm = load_zoo(name)
    train, source = training_samples(name)
    if name == "digits-cond":
        from studio.data import digits

        x0 = torch.from_numpy(digits.load("test").images)
        null = {"class_labels": torch.full((1,), int(dm.info.get("null_class", 10)))}
        held = f"the {len(x0)} test digits"
        rank = None
    else:
        from studio.data import shapes, text

        x0 = shapes.to_model_range(shapes.make_dataset(256, seed=515151)[0])
        null = zoo_text_kwargs(text.encode(text.load_text_encoder(), [""]))
        held = "256 held-out renders (make_dataset seed 515151)"
        rank = 256
    if quick:
        x0, train = x0[:32], train[:400]
    return dm, train, source, x0, held, null, rank


def curve(name: str, quick: bool) -> dict:
    t0 = time.perf_counter()
    dm, train, source, x0, held, null, rank = model_and_data(name, quick)
    sched = make_scheduler("ddpm", dm.scheduler_config, dm.prediction_type)

    @torch.no_grad()
    def learned(x, t):
        tt = torch.full((x.shape[0],), t)
        out = [predicted_x0(sched, dm.model_fn(part, tt[:len(part)], repeat(null, len(part))), part, tt[:len(part)],
                            dm.prediction_type) for part in x.split(64)]
        return torch.cat(out)

    refs = analytic.references_for(dm.gaussian, train, clusters=(10,), rank=rank)
    rows = analytic.explain(learned, refs, x0, sched.alphas_cumprod, TIMESTEPS, seed=NOISE_SEED)
    return {"model": name, "held_out": held, "references_from": source, "rows": rows,
            "gaussian_from": analytic.explained_from(rows, "gaussian", THRESHOLD),
            "mean_from": analytic.explained_from(rows, "mean", THRESHOLD),
            "seconds": round(time.perf_counter() - t0, 1)}


def fmt(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def level(d) -> str:
    return f"t >= {d['t']} (sigma/alpha >= {d['sigma_over_alpha']})" if d else "never at every higher level"


def markdown(out: dict) -> str:
    lines = ["# The Gaussian-score diagnostic (Wang & Vastola, TMLR 2024)", "",
             f"Machine: {out['machine']}; {out['date']}. Command: `python benchmarks/bench_gaussian_score.py`.", "",
             "Per-sample explained variance `1 - |learned - reference|^2 / |learned|^2` (the official "
             "`explained_var_vec`), in score space (the paper's plot; the learned and the reference score "
             "share the `-x / sigma^2` term, so read each row against `mean`) and in denoiser space, mean "
             "over held-out images with a 95 % bootstrap interval. The learned denoiser is each model's "
             "unconditional branch. No settings are chosen here, so there is no selection set.", ""]
    for c in out["curves"]:
        refs = [k.split("/")[0] for k in c["rows"][0] if k.endswith("/score")]
        lines += [f"## {c['model']}", "",
                  f"Held out: {c['held_out']}; references from {c['references_from']}; {c['seconds']} s.", "",
                  f"**The Gaussian explains >= {THRESHOLD:.0%} of the learned score from {level(c['gaussian_from'])}**; "
                  f"the data mean alone does from {level(c['mean_from'])}.", "",
                  "| t | sigma/alpha | " + " | ".join(f"{r} (score)" for r in refs) + " | "
                  + " | ".join(f"{r} (denoiser)" for r in refs) + " |",
                  "|---|---|" + "---|" * (2 * len(refs))]
        for row in c["rows"]:
            lines.append(f"| {row['t']} | {row['sigma_over_alpha']:.3g} | "
                         + " | ".join(fmt(row[f'{r}/score']) for r in refs) + " | "
                         + " | ".join(fmt(row[f'{r}/denoiser']) for r in refs) + " |")
        lines.append("")
    lines += ["Context only (not comparable): the paper reports the Gaussian explaining most of the learned "
              "score of EDM models on CIFAR-10, FFHQ, AFHQ and MNIST at moderate and high noise, and a "
              "coarse GMM, not the delta mixture, at low noise.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few images, to check the script runs")
    ap.add_argument("--models", default="digits-cond,shapes-t2i")
    args = ap.parse_args()
    torch.set_num_threads(1)
    curves = [curve(name, args.quick) for name in args.models.split(",")]
    out = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "threshold": THRESHOLD,
           "timesteps": list(TIMESTEPS), "curves": curves}
    stem = ROOT / "results" / ("gaussian_score_quick" if args.quick else "gaussian_score")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
