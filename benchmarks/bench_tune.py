"""Tune benchmark, more methods side by side (issue 24): SaRA, LoRA and full weights; PSO, the plain
losses, R0 and Diffusion-DRO, all on the same targets, steps and seeds, measured the same way.

Common setting (the Tune tab's): ``digits-fewstep`` tuned towards ``thick-0-4`` (15 thick real digits
of classes 0-4), 150 optimizer steps, its 4-step sampler, lr 3e-4, LoRA rank 8, SaRA share 0.1.
Judges no method trains on or reads: ``judge-digits`` (accuracy on the asked digit), ``fd-digits``
(FD-digits, a toy-scale Frechet distance, **not FID**) and the independent style judge
(:mod:`studio.data.style_judge`). R0's reward model is ``guide-clean``, never the judge.

Every row is measured as :func:`studio.train.tuning.measure` does (``PER_CLASS`` samples of every
digit from the untuned and the tuned model, sample i from seed ``seed * 100_003 + 50_000 + i`` in
both): on digits 0-4 the style rate, the judge's accuracy and FD-digits to the untuned samples
(drift); on digits 5-9, which no target shows, the judge's accuracy change and FD-digits drift
(**forgetting**). Here the samples are kept, so rows are also compared **paired** (row minus row
on the same sample seeds: bootstrap of per-sample differences; for FD,
:func:`studio.core.metrics.frechet_paired_difference`). Also on the eval samples of 0-4: R0's two
rewards (log p(asked digit) under guide-clean, soft thickness), so reward can be set beside quality.

Rows (report set):

* untuned; the plain diffusion loss at the distilled timesteps with the prior term (``plain-distilled``,
  the fair baseline) on LoRA, SaRA and full weights;
* SaRA ablations, one switch each: nuclear norm off (``sara_rank_weight 0``), no re-selection
  (``sara_progressive False``), the release's ``abs()`` initialisation (``sara_release_abs True``), and
  that initialisation *untrained* (what the sign drop alone does to the model);
* PSO (DPO form) on LoRA; DreamBooth's ``plain`` loss on LoRA;
* R0 on LoRA with its regularisers (weight-regularisation lambda chosen on the selection set) and the
  reward-hacking ablations: weight regularisation off, random eta off, normalised gradients off, all three
  off; training reward (mean over the last 10 steps of the history) beside the eval figures;
* Diffusion-DRO on LoRA and on full weights (the paper fine-tunes the full UNet).

Own-paper setting (SaRA's: a multi-step model, DreamBooth-style uniform-timestep epsilon MSE as its
fine-tuning script): ``digits-cond`` tuned with ``loss="plain"`` on LoRA, SaRA and full, sampled and
measured at 20 DDIM steps (no classifier-free guidance), the same targets: the forgetting claim.

**Selection vs report.** Chosen here, on the *selection* set only (training seed 0, measure seed 0),
by a criterion fixed before looking: *the highest style rate (independent judge) among the candidates
whose judge accuracy is within 5 points of the untuned model's; ties (equal style rate) to the more
conservative candidate; if none qualifies, the highest judge accuracy*. Candidates: R0's
weight-regularisation lambda among ``R0_LAMBDAS`` (R0 on LoRA), and the learning rate of full
fine-tuning among ``FULL_LRS`` (plain-distilled on full weights; a 4-step smoke run on the selection set showed the tab's 3e-4
wrecking this small UNet within a few steps when every weight trains). The chosen full-weights lr is
used by every full row (plain-distilled, DRO, and the digits-cond row). Added after the first report
(DRO on full weights at that lr moved *away* from the style): Diffusion-DRO's own full-weights lr among
``FULL_LRS`` (DRO on full weights), by the same criterion on the same selection set, reported as the
extra row ``DRO, full, own lr`` beside ``DRO, full``. Nothing else is chosen (LoRA's
and SaRA's lr 3e-4, share and rank are the tab's defaults). Every reported figure comes from the
*report* set (training seed 1, measure seed 1).

Verdict criteria (fixed before the run): a paired difference whose interval covers zero is "no
difference". SaRA keeps more of the original than LoRA: forgetting FD-digits (SaRA - LoRA) interval
below zero, forgetting accuracy difference not below zero, at a style rate not lower (style
difference's upper end >= 0). R0 hacks without regularisers: the all-off row's eval reward above the
default's (paired, either reward) while drift FD is higher or judge accuracy lower (paired); "with them
it does not": the default's judge accuracy at most 5 points under the untuned model's (paired interval's
lower end >= -0.05). DRO moves towards the style with less drift than plain-distilled: style rate above
the untuned model's (paired) and drift FD-digits (DRO - plain-distilled, same weights) below zero.

One thread (``torch.set_num_threads(1)``), the machine shared with other jobs: seconds are a CPU-time
upper bound for 2 cores. Rows are cached one file each under ``CACHE`` (a re-run skips rows already
done; ``--part`` runs one group, so two groups can run at once); the .md/.json are assembled from
whatever rows exist, the missing ones named. Run ``python benchmarks/bench_tune.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from studio.core import metrics
from studio.core.loading import load_zoo
from studio.data import digits, style_judge
from studio.methods import tune
from studio.train import r0, tuning
from studio.train.boot import FewStep
from studio.train.common import machine_description

ROOT = Path(__file__).resolve().parent
STYLE_SET = "thick-0-4"
STYLE = digits.set_style(STYLE_SET)
SELECTION_SEED, REPORT_SEED = 0, 1  # training seed = measure seed in each set
PER_CLASS = 30
R0_LAMBDAS = (0.1, 1.0, 10.0)
FULL_LRS = (1e-5, 3e-5, 1e-4)
COND_STEPS = 20
BASE = tune.Params(style=STYLE_SET, steps=150, loss="plain-distilled", weights="lora")  # the tab's settings

# (key, base, Params changes, special) ; special: "abs" (the release's abs() init), "abs-untrained"
FEWSTEP_ROWS = [
    ("LoRA, plain-distilled", {}, None),
    ("SaRA, plain-distilled", {"weights": "sara"}, None),
    ("full, plain-distilled", {"weights": "full"}, None),
    ("SaRA, nuclear norm off", {"weights": "sara", "sara_rank_weight": 0.0}, None),
    ("SaRA, no re-selection", {"weights": "sara", "sara_progressive": False}, None),
    ("SaRA, abs() init (the release's)", {"weights": "sara", "sara_release_abs": True}, None),
    ("SaRA, abs() init, untrained", {"weights": "sara", "sara_release_abs": True}, "abs-untrained"),
    ("PSO (DPO), LoRA", {"loss": "dpo"}, None),
    ("DreamBooth (plain), LoRA", {"loss": "plain"}, None),
    ("DRO, LoRA", {"loss": "dro"}, None),
    ("DRO, full", {"loss": "dro", "weights": "full"}, None),
    ("DRO, full, own lr", {"loss": "dro", "weights": "full"}, None),
]
DRO_OWN = "DRO, full, own lr"
R0_ROWS = [  # weight_reg None: the selected lambda
    ("R0, LoRA (regularised)", {"loss": "r0"}, None),
    ("R0, weight reg off", {"loss": "r0", "r0_weight_reg": 0.0}, None),
    ("R0, random eta off", {"loss": "r0", "r0_random_eta": False}, None),
    ("R0, normalised gradients off", {"loss": "r0", "r0_normalise": False}, None),
    ("R0, all three off", {"loss": "r0", "r0_weight_reg": 0.0, "r0_random_eta": False, "r0_normalise": False}, None),
]
COND_ROWS = [
    ("cond: LoRA, plain", {"loss": "plain"}, None),
    ("cond: SaRA, plain", {"loss": "plain", "weights": "sara"}, None),
    ("cond: full, plain", {"loss": "plain", "weights": "full"}, None),
]
DEFAULT_ROWS = ("LoRA, plain-distilled", "SaRA, plain-distilled", "full, plain-distilled", "PSO (DPO), LoRA",
                "DreamBooth (plain), LoRA", "R0, LoRA (regularised)", "DRO, LoRA", "DRO, full")
TIMED = {  # the tab's defaults, timed on 2 threads with nothing else running (--part timing)
    "PSO (DPO), LoRA": {"loss": "dpo"}, "LoRA, plain-distilled": {"loss": "plain-distilled"},
    "SaRA, plain-distilled": {"loss": "plain-distilled", "weights": "sara"},
    "full, plain-distilled": {"loss": "plain-distilled", "weights": "full"},
    "R0, LoRA (regularised)": {"loss": "r0"}, "DRO, LoRA": {"loss": "dro"}}
PAIRS = [  # (a, b): a - b
    ("SaRA, plain-distilled", "LoRA, plain-distilled"),
    ("full, plain-distilled", "LoRA, plain-distilled"),
    ("SaRA, nuclear norm off", "SaRA, plain-distilled"),
    ("SaRA, no re-selection", "SaRA, plain-distilled"),
    ("SaRA, abs() init (the release's)", "SaRA, plain-distilled"),
    ("PSO (DPO), LoRA", "LoRA, plain-distilled"),
    ("DreamBooth (plain), LoRA", "LoRA, plain-distilled"),
    ("DRO, LoRA", "LoRA, plain-distilled"),
    ("DRO, full", "full, plain-distilled"),
    ("DRO, full, own lr", "full, plain-distilled"),
    ("R0, weight reg off", "R0, LoRA (regularised)"),
    ("R0, random eta off", "R0, LoRA (regularised)"),
    ("R0, normalised gradients off", "R0, LoRA (regularised)"),
    ("R0, all three off", "R0, LoRA (regularised)"),
    ("cond: SaRA, plain", "cond: LoRA, plain"),
    ("cond: full, plain", "cond: LoRA, plain"),
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Bench:
    def __init__(self, quick: bool):
        torch.set_num_threads(1)
        self.quick = quick
        self.per_class = 5 if quick else PER_CLASS
        self.steps = 4 if quick else BASE.steps
        self.cache = ROOT.parent / "runs" / "bench-tune" / ("quick" if quick else "full")  # per-row cache (not tracked)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._models: dict = {}
        self.images, self.labels = digits.style_set(STYLE_SET)
        self.asked = sorted({int(c) for c in self.labels})

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = load_zoo(name)
        return self._models[name]

    def base_of(self, key: str) -> tuple[str, int]:
        return ("digits-cond", COND_STEPS) if key.startswith("cond") else ("digits-fewstep", 4)

    # ---------------------------------------------------------------- sampling and per-sample outcomes
    def eval_labels_seeds(self, seed: int) -> tuple[list[int], list[int]]:
        labels = [c for c in range(10) for _ in range(self.per_class)]
        return labels, [seed * 100_003 + tuning.EVAL_SEED + i for i in range(len(labels))]

    def draw(self, fs: FewStep, seed: int) -> torch.Tensor:
        labels, seeds = self.eval_labels_seeds(seed)
        return fs.sample(labels, seeds, fs.max_steps).clamp(-1, 1)

    def untuned(self, base: str, seed: int) -> torch.Tensor:
        path = self.cache / f"untuned-{base}-{seed}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        dm, steps = self.model(base), (COND_STEPS if base == "digits-cond" else 4)
        x = self.draw(FewStep(dm, steps=steps), seed)
        torch.save(x, path)
        return x

    @torch.no_grad()
    def outcomes(self, x: torch.Tensor, seed: int) -> dict[str, np.ndarray]:
        labels, _ = self.eval_labels_seeds(seed)
        judge, fd_net, clf = self.model("judge-digits"), self.model("fd-digits"), self.model("guide-clean")
        judge.eval(), clf.eval()
        lab = np.asarray(labels)
        inside = np.isin(lab, self.asked)
        rw = r0.rewards(x[inside].float(), list(lab[inside]), clf)
        return {"inside": inside, "hits": judge(x.float()).argmax(-1).numpy() == lab,
                "style": style_judge.called(x[inside], STYLE).astype(float),
                "features": metrics.features(fd_net, x),
                "reward_class": rw["class"].numpy(), "reward_style": rw["style"].numpy(),
                "thickness": digits.thickness(x[inside])}

    def row_figures(self, after: dict, before: dict) -> dict:
        """The row as :func:`studio.train.tuning.measure` computes it, plus the eval rewards."""
        ins, out = after["inside"], ~after["inside"]
        est = lambda v: metrics.bootstrap_mean(v).to_dict()
        return {
            "style_rate": est(after["style"]), "style_rate_untuned": est(before["style"]),
            "judge_accuracy": est(after["hits"][ins]), "judge_accuracy_untuned": est(before["hits"][ins]),
            "drift_fd": metrics.frechet_features(after["features"][ins], before["features"][ins]).to_dict(),
            "forgetting_accuracy": est(after["hits"][out].astype(float) - before["hits"][out].astype(float)),
            "forgetting_fd": metrics.frechet_features(after["features"][out], before["features"][out]).to_dict(),
            "eval_reward_class": est(after["reward_class"]), "eval_reward_style": est(after["reward_style"]),
            "mean_thickness": float(np.mean(after["thickness"])),
        }

    # ---------------------------------------------------------------- one row
    def params(self, change: dict, seed: int) -> tune.Params:
        return replace(BASE, steps=self.steps, seed=seed, **change)

    def run_row(self, group: str, key: str, change: dict, special: str | None, seed: int) -> dict:
        path = self.cache / group / f"{slug(key)}.json"
        if path.exists():
            return json.loads(path.read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # another process of this bench may be running the row
            path.with_suffix(".lock").open("x").close()
        except FileExistsError:
            return None
        base, steps = self.base_of(key)
        dm = self.model(base)
        p = self.params(change, seed)
        entry: dict = {"key": key, "base": base, "sampler_steps": steps, "seed": seed, "special": special,
                       "params": {k: v for k, v in asdict(p).items()}}
        t0 = time.perf_counter()
        if special == "abs-untrained":
            w = tuning.make_weights("sara", dm.unet, fraction=p.sara_fraction, keep_sign=not p.sara_release_abs)
            unet = tuning.plain_network(w)
            entry["stats"], entry["seconds"] = {"changed_entries": sum(v.numel() for k, v in w.state().items()
                                                                       if k.endswith(".index"))}, 0.0
        else:
            tuned = tune.run_tune(dm, self.images, self.labels, p, classifier=self.model("guide-clean"),
                                  sampler_steps=steps)
            unet, entry["stats"], entry["seconds"] = tuned.unet, tuned.stats, round(tuned.seconds, 1)
            entry["history_last10"] = _last(tuned.history, 10)
            entry["history_first10"] = _last(tuned.history[:10], 10)
        x = self.draw(FewStep(dm, unet, steps), seed)
        torch.save(x, path.with_suffix(".pt"))
        before = self.outcomes(self.untuned(base, seed), seed)
        entry["row"] = self.row_figures(self.outcomes(x, seed), before)
        entry["eval_seconds"] = round(time.perf_counter() - t0 - entry["seconds"], 1)
        entry["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(json.dumps(entry, indent=1) + "\n")
        path.with_suffix(".lock").unlink()
        print(f"[{time.strftime('%H:%M:%S')}] {group} / {key}: {entry['seconds']} s train, "
              f"style {entry['row']['style_rate']['value']:.3f}, acc {entry['row']['judge_accuracy']['value']:.3f}, "
              f"drift {entry['row']['drift_fd']['value']:.1f}, forget fd {entry['row']['forgetting_fd']['value']:.1f}",
              flush=True)
        return entry

    def samples(self, group: str, key: str) -> torch.Tensor | None:
        path = self.cache / group / f"{slug(key)}.pt"
        return torch.load(path, weights_only=True) if path.exists() else None

    # ---------------------------------------------------------------- groups
    def untuned_row(self, group: str, base: str, seed: int) -> dict:
        path = self.cache / group / f"untuned-{base}.json"
        if path.exists():
            return json.loads(path.read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        o = self.outcomes(self.untuned(base, seed), seed)
        est = lambda v: metrics.bootstrap_mean(v).to_dict()
        entry = {"key": f"untuned ({base})", "row": {
            "style_rate": est(o["style"]), "judge_accuracy": est(o["hits"][o["inside"]]),
            "judge_accuracy_other_digits": est(o["hits"][~o["inside"]]),
            "eval_reward_class": est(o["reward_class"]), "eval_reward_style": est(o["reward_style"]),
            "mean_thickness": float(np.mean(o["thickness"]))}}
        path.write_text(json.dumps(entry, indent=1) + "\n")
        return entry

    def selection(self) -> dict:
        """R0's lambda and the full-weights lr on the selection set, by the criterion in the module docstring."""
        path = self.cache / "selection" / "choice.json"
        if path.exists():
            choice = json.loads(path.read_text())
            if "dro_full_lr" in choice:
                return choice
        untuned = self.untuned_row("selection", "digits-fewstep", SELECTION_SEED)["row"]
        floor = untuned["judge_accuracy"]["value"] - 0.05
        keep = ("style_rate", "judge_accuracy", "drift_fd", "forgetting_fd", "eval_reward_class", "eval_reward_style")
        choice = {"criterion": "highest style rate among candidates with judge accuracy >= untuned - 0.05 (ties: "
                               "the more conservative, larger lambda / smaller lr; none qualifies: highest judge "
                               "accuracy)", "judge_accuracy_floor": floor, "untuned": untuned}
        for name, values, change, conservative in (
                ("r0_weight_reg", R0_LAMBDAS, lambda v: {"loss": "r0", "r0_weight_reg": v}, lambda v: v),
                ("full_lr", FULL_LRS, lambda v: {"weights": "full", "full_lr": v}, lambda v: -v),
                ("dro_full_lr", FULL_LRS, lambda v: {"loss": "dro", "weights": "full", "full_lr": v}, lambda v: -v)):
            rows = {}
            while len(rows) < len(values):  # rows another process holds: do the others, then wait for its files
                for v in values:
                    if v not in rows:
                        e = self.run_row("selection", f"{name} {v:g}", change(v), None, SELECTION_SEED)
                        if e is not None:
                            rows[v] = e["row"]
                if len(rows) < len(values):
                    time.sleep(20)
            ok = [v for v in values if rows[v]["judge_accuracy"]["value"] >= floor]
            chosen = (max(ok, key=lambda v: (rows[v]["style_rate"]["value"], conservative(v))) if ok
                      else max(values, key=lambda v: rows[v]["judge_accuracy"]["value"]))
            choice[name] = chosen
            choice[f"{name}_qualified"] = ok
            choice[f"{name}_rows"] = {f"{v:g}": {k: rows[v][k] for k in keep} for v in values}
        path.write_text(json.dumps(choice, indent=1) + "\n")
        return choice

    def report(self) -> None:
        """Every report row (rows another process holds are skipped); those needing a selection last."""
        self.untuned_row("report", "digits-fewstep", REPORT_SEED)
        for key, change, special in FEWSTEP_ROWS:
            if change.get("weights") != "full":
                self.run_row("report", key, change, special, REPORT_SEED)
        choice = self.selection()
        for key, change, special in FEWSTEP_ROWS:
            if change.get("weights") == "full":
                lr = choice["dro_full_lr"] if key == DRO_OWN else choice["full_lr"]
                self.run_row("report", key, {**change, "full_lr": lr}, special, REPORT_SEED)
        for key, change, special in R0_ROWS:
            self.run_row("report", key, {"r0_weight_reg": choice["r0_weight_reg"], **change}, special, REPORT_SEED)

    def cond(self) -> None:
        self.untuned_row("report", "digits-cond", REPORT_SEED)
        choice = self.selection()
        for key, change, special in COND_ROWS:
            change = {**change, "full_lr": choice["full_lr"]} if change.get("weights") == "full" else change
            self.run_row("report", key, change, special, REPORT_SEED)

    def check_measure(self) -> dict:
        """The bench's row against :func:`tuning.measure` on the same tuned model (quick runs)."""
        dm = self.model("digits-fewstep")
        p = self.params({}, REPORT_SEED)
        tuned = tune.run_tune(dm, self.images, self.labels, p, classifier=self.model("guide-clean"))
        m = tuning.measure(FewStep(dm), FewStep(dm, tuned.unet), self.model("judge-digits"), self.model("fd-digits"),
                           targets=self.labels, style=STYLE, per_class=self.per_class, seed=REPORT_SEED)
        mine = self.row_figures(self.outcomes(self.draw(FewStep(dm, tuned.unet), REPORT_SEED), REPORT_SEED),
                                self.outcomes(self.untuned("digits-fewstep", REPORT_SEED), REPORT_SEED))
        keys = ("style_rate", "style_rate_untuned", "judge_accuracy", "drift_fd", "forgetting_accuracy",
                "forgetting_fd")
        return {k: {"measure": m[k]["value"], "bench": mine[k]["value"]} for k in keys}

    # ---------------------------------------------------------------- assemble
    def paired(self, a: str, b: str) -> dict | None:
        xa, xb = self.samples("report", a), self.samples("report", b)
        if xa is None or xb is None:
            return None
        base, _ = self.base_of(a)
        oa, ob = self.outcomes(xa, REPORT_SEED), self.outcomes(xb, REPORT_SEED)
        o0 = self.outcomes(self.untuned(base, REPORT_SEED), REPORT_SEED)
        ins, out = oa["inside"], ~oa["inside"]
        est = lambda v: metrics.bootstrap_mean(v).to_dict()
        fd = lambda idx: metrics.frechet_paired_difference(  # FD(a, untuned) - FD(b, untuned)
            o0["features"][idx], ob["features"][idx], oa["features"][idx]).to_dict()
        return {"style_rate": est(oa["style"] - ob["style"]),
                "judge_accuracy": est(oa["hits"][ins].astype(float) - ob["hits"][ins].astype(float)),
                "drift_fd": fd(ins),
                "forgetting_accuracy": est(oa["hits"][out].astype(float) - ob["hits"][out].astype(float)),
                "forgetting_fd": fd(out),
                "eval_reward_class": est(oa["reward_class"] - ob["reward_class"]),
                "eval_reward_style": est(oa["reward_style"] - ob["reward_style"])}

    def vs_untuned(self, a: str) -> dict | None:
        xa = self.samples("report", a)
        if xa is None:
            return None
        base, _ = self.base_of(a)
        oa, o0 = self.outcomes(xa, REPORT_SEED), self.outcomes(self.untuned(base, REPORT_SEED), REPORT_SEED)
        ins = oa["inside"]
        est = lambda v: metrics.bootstrap_mean(v).to_dict()
        return {"style_rate": est(oa["style"] - o0["style"]),
                "judge_accuracy": est(oa["hits"][ins].astype(float) - o0["hits"][ins].astype(float)),
                "eval_reward_class": est(oa["reward_class"] - o0["reward_class"]),
                "eval_reward_style": est(oa["reward_style"] - o0["reward_style"])}

    def timing(self) -> None:
        """The tab's default runs (its settings, a validation grid every 25 steps) on 2 threads: the issue's
        "under 3 minutes on 2 cores"; run it with nothing else on the machine."""
        torch.set_num_threads(2)
        path = self.cache / "timing.json"
        out = json.loads(path.read_text()) if path.exists() else {}
        for key, change in TIMED.items():
            if key in out:
                continue
            p = replace(tune.Params(style=STYLE_SET, seed=REPORT_SEED), **change)
            tuned = tune.run_tune(self.model("digits-fewstep"), self.images, self.labels, p,
                                  classifier=self.model("guide-clean"))
            out[key] = round(tuned.seconds, 1)
            path.write_text(json.dumps(out, indent=1) + "\n")
            print(f"[{time.strftime('%H:%M:%S')}] timing / {key}: {out[key]} s on 2 threads")
        torch.set_num_threads(1)

    def assemble(self) -> dict:
        rows, missing = {}, []
        report = self.cache / "report"
        for key, *_ in FEWSTEP_ROWS + R0_ROWS + COND_ROWS:
            path = report / f"{slug(key)}.json"
            if path.exists():
                rows[key] = json.loads(path.read_text())
            else:
                missing.append(key)
        untuned = {b: json.loads((report / f"untuned-{b}.json").read_text())
                   for b in ("digits-fewstep", "digits-cond") if (report / f"untuned-{b}.json").exists()}
        choice_path = self.cache / "selection" / "choice.json"
        out = {"machine": machine_description() + ", 1 thread (torch.set_num_threads(1); the machine shared "
                                                  "with other jobs)",
               "date": time.strftime("%Y-%m-%d"), "quick": self.quick, "per_class": self.per_class,
               "timing_2_threads": (json.loads((self.cache / "timing.json").read_text())
                                    if (self.cache / "timing.json").exists() else {}),
               "train_steps": self.steps,
               "sets": {"selection": {"train_seed": SELECTION_SEED, "measure_seed": SELECTION_SEED},
                        "report": {"train_seed": REPORT_SEED, "measure_seed": REPORT_SEED}},
               "common": {k: v for k, v in asdict(replace(BASE, steps=self.steps)).items()},
               "selection": json.loads(choice_path.read_text()) if choice_path.exists() else None,
               "untuned": untuned, "rows": rows, "missing": missing,
               "paired": {}, "vs_untuned": {}}
        for a, b in PAIRS:
            d = self.paired(a, b) if a in rows and b in rows else None
            if d is not None:
                out["paired"][f"{a} - {b}"] = d
        for a in rows:
            d = self.vs_untuned(a)
            if d is not None:
                out["vs_untuned"][a] = d
        out["goals"] = goals(out)
        return out


def _last(history: list[dict], n: int) -> dict:
    tail = history[-n:]
    keys = {k for h in tail for k in h if k not in ("step", "seconds")}
    return {k: float(np.mean([h[k] for h in tail if k in h])) for k in sorted(keys)}


# -------------------------------------------------------------------- verdicts and markdown
def _v(e: dict) -> list[float]:
    return [e["value"], e["low"], e["high"]]


def _ci(e: dict) -> str:
    v, lo, hi = _v(e)
    return f"{v:.1f} ({lo:.1f}..{hi:.1f})" if abs(v) > 2 or abs(hi) > 5 else f"{v:.3f} ({lo:.3f}..{hi:.3f})"


def _d(e: dict) -> str:
    v, lo, hi = _v(e)
    return f"{v:+.1f} ({lo:+.1f}..{hi:+.1f})" if abs(hi - lo) > 3 else f"{v:+.3f} ({lo:+.3f}..{hi:+.3f})"


def _sign(e: dict) -> str:
    return "above zero" if e["low"] > 0 else "below zero" if e["high"] < 0 else "covers zero (no difference)"


def goals(out: dict) -> list[str]:
    rows, pairs, vs0 = out["rows"], out["paired"], out["vs_untuned"]
    lines = []

    def verdict(text: str, met: bool | None) -> None:
        lines.append(f"{text}: {'NOT MEASURED' if met is None else 'MET' if met else 'MISSED'}")

    for prefix, sara, lora, what in (("", "SaRA, plain-distilled", "LoRA, plain-distilled",
                                      "digits-fewstep, plain-distilled, 4 steps"),
                                     ("cond: ", "cond: SaRA, plain", "cond: LoRA, plain",
                                      "digits-cond, DreamBooth loss, 20 steps (SaRA's own setting)")):
        d = pairs.get(f"{sara} - {lora}")
        if d is None:
            verdict(f"SaRA keeps more of the original than LoRA at the same target quality ({what})", None)
            continue
        met = d["forgetting_fd"]["high"] < 0 and d["forgetting_accuracy"]["high"] >= 0 and d["style_rate"]["high"] >= 0
        verdict(f"SaRA keeps more of the original than LoRA at the same target quality ({what}): SaRA - LoRA "
                f"forgetting FD-digits {_d(d['forgetting_fd'])} ({_sign(d['forgetting_fd'])}), forgetting accuracy "
                f"{_d(d['forgetting_accuracy'])} ({_sign(d['forgetting_accuracy'])}), style rate "
                f"{_d(d['style_rate'])} ({_sign(d['style_rate'])}), drift on 0-4 {_d(d['drift_fd'])}", met)
        s, lo = rows[sara]["stats"], rows[lora]["stats"]
        verdict(f"SaRA trains fewer parameters and holds less optimizer state than LoRA ({what}): trainable "
                f"{s['trainable']:,} vs {lo['trainable']:,}; optimizer bytes {s['optimizer_bytes']:,} vs "
                f"{lo['optimizer_bytes']:,}", s["trainable"] < lo["trainable"] and s["optimizer_bytes"] < lo["optimizer_bytes"])
    default, off = "R0, LoRA (regularised)", "R0, all three off"
    d = pairs.get(f"{off} - {default}")
    if d is None:
        verdict("R0 without its regularisers hacks the reward", None)
    else:
        reward_up = d["eval_reward_class"]["low"] > 0 or d["eval_reward_style"]["low"] > 0
        worse = d["drift_fd"]["low"] > 0 or d["judge_accuracy"]["high"] < 0
        tr_a, tr_b = rows[off]["history_last10"], rows[default]["history_last10"]
        verdict(f"R0 without its regularisers hacks the reward (all three off - regularised, paired on eval samples: "
                f"reward log p(digit) {_d(d['eval_reward_class'])}, reward thickness {_d(d['eval_reward_style'])}; "
                f"drift FD-digits {_d(d['drift_fd'])}, judge accuracy {_d(d['judge_accuracy'])}, style rate "
                f"{_d(d['style_rate'])}; training reward, last 10 steps: log p {tr_a['reward_class']:.3f} vs "
                f"{tr_b['reward_class']:.3f}, thickness {tr_a['reward_style']:.3f} vs {tr_b['reward_style']:.3f})",
                reward_up and worse)
    v = vs0.get(default)
    if v is None:
        verdict("R0 with its regularisers does not hack (judge accuracy within 5 points of untuned)", None)
    else:
        verdict(f"R0 with its regularisers does not hack: judge accuracy minus untuned {_d(v['judge_accuracy'])} "
                f"(lower end >= -0.05), style rate minus untuned {_d(v['style_rate'])}, drift FD-digits "
                f"{_ci(rows[default]['row']['drift_fd'])}", v["judge_accuracy"]["low"] >= -0.05)
    for dro, plain in (("DRO, LoRA", "LoRA, plain-distilled"), ("DRO, full", "full, plain-distilled"),
                       (DRO_OWN, "full, plain-distilled")):
        d, v = pairs.get(f"{dro} - {plain}"), vs0.get(dro)
        if d is None or v is None:
            verdict(f"{dro}: moves towards the style with less drift than {plain}", None)
            continue
        verdict(f"{dro} moves towards the expert style (style rate minus untuned {_d(v['style_rate'])}) with less "
                f"drift than {plain} (drift FD-digits difference {_d(d['drift_fd'])}, {_sign(d['drift_fd'])}; style "
                f"rate difference {_d(d['style_rate'])})", v["style_rate"]["low"] > 0 and d["drift_fd"]["high"] < 0)
    timed = out.get("timing_2_threads") or {}
    for key in DEFAULT_ROWS:
        if key in timed:  # the issue's figure: 2 cores, nothing else running
            one = f"; {rows[key]['seconds']:.0f} s on 1 thread, shared machine" if key in rows else ""
            verdict(f"{key}: default run in under 3 minutes ({timed[key]:.0f} s on 2 threads{one})", timed[key] < 180)
        elif key in rows:
            sec = rows[key]["seconds"]
            verdict(f"{key}: default run in under 3 minutes ({sec:.0f} s on 1 thread, shared machine)", sec < 180)
    return lines


def markdown(out: dict) -> str:
    sel = out["selection"]
    lines = [
        f"# Tune benchmark: SaRA, LoRA, full; PSO, plain, R0, Diffusion-DRO ({out['date']})", "",
        f"Machine: {out['machine']}. {'QUICK SMOKE RUN (not results). ' if out['quick'] else ''}"
        f"FD-digits is a toy-scale Frechet distance on `fd-digits` features, **not FID**. 95% bootstrap intervals; "
        "differences are paired (same sample seeds) and a difference whose interval covers zero is no difference. "
        "One training run per row: the intervals are over samples, not over training runs.", "",
        f"Common setting: `digits-fewstep`, targets `{STYLE_SET}` (15 thick real digits of classes 0-4), "
        f"{out['train_steps']} training steps, 4-step sampler, lr {out['common']['lr']}, LoRA rank "
        f"{out['common']['lora_rank']}, SaRA share {out['common']['sara_fraction']}, prior weight "
        f"{out['common']['prior_weight']}. Measured on {out['per_class']} samples per digit ({10 * out['per_class']} "
        "per row): style rate (independent style judge) and judge accuracy on digits 0-4, FD-digits of 0-4 to the "
        "untuned model's samples at the same seeds (drift); forgetting on digits 5-9 (no target shows them): judge "
        "accuracy change and FD-digits drift. Eval rewards: R0's two rewards on the eval samples of 0-4 "
        "(log p(asked digit) under `guide-clean`, soft thickness).", "",
        f"Sets. Selection: training seed {out['sets']['selection']['train_seed']}, measure seed "
        f"{out['sets']['selection']['measure_seed']} (sample seeds 0 x 100003 + 50000 + i). Report (every table "
        f"below; nothing chosen on it): training seed {out['sets']['report']['train_seed']}, measure seed "
        f"{out['sets']['report']['measure_seed']} (sample seeds 100003 + 50000 + i).", ""]
    if sel:
        lines += [f"Selected on the selection set (criterion, fixed before the run: {sel['criterion']}; judge "
                  f"accuracy floor {sel['judge_accuracy_floor']:.3f}): R0 weight regularisation lambda = "
                  f"**{sel['r0_weight_reg']:g}** (qualified: {', '.join(f'{x:g}' for x in sel['r0_weight_reg_qualified']) or 'none'}); "
                  f"full fine-tuning lr = **{sel['full_lr']:g}** (qualified: "
                  f"{', '.join(f'{x:g}' for x in sel['full_lr_qualified']) or 'none'}).",
                  "", "| selection set | style rate | judge accuracy | drift FD-digits | forgetting FD-digits | "
                  "eval log p(digit) | eval thickness |", "|---|---|---|---|---|---|---|",
                  f"| untuned | {_ci(sel['untuned']['style_rate'])} | {_ci(sel['untuned']['judge_accuracy'])} | - | - | "
                  f"{_ci(sel['untuned']['eval_reward_class'])} | {_ci(sel['untuned']['eval_reward_style'])} |"]
        if "dro_full_lr" in sel:
            lines.insert(-4, f"Added after the first report (see the module docstring): Diffusion-DRO's own full-weights "
                             f"lr = **{sel['dro_full_lr']:g}** (qualified: "
                             f"{', '.join(f'{x:g}' for x in sel['dro_full_lr_qualified']) or 'none'}), for the row "
                             f"`{DRO_OWN}`.")
        for name, what in (("r0_weight_reg", "R0, LoRA, lambda"), ("full_lr", "plain-distilled, full, lr"),
                           ("dro_full_lr", "DRO, full, lr")):
            for v, r in sel.get(f"{name}_rows", {}).items():
                lines.append(f"| {what} {v} | {_ci(r['style_rate'])} | {_ci(r['judge_accuracy'])} | "
                             f"{_ci(r['drift_fd'])} | {_ci(r['forgetting_fd'])} | {_ci(r['eval_reward_class'])} | "
                             f"{_ci(r['eval_reward_style'])} |")
        lines.append("")
    lines += ["## Report set", "",
              "| row | style rate | judge accuracy | drift FD-digits (0-4) | forgetting: accuracy change (5-9) | "
              "forgetting FD-digits (5-9) | trainable | optimizer bytes | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for base, u in out["untuned"].items():
        r = u["row"]
        lines.append(f"| untuned ({base}) | {_ci(r['style_rate'])} | {_ci(r['judge_accuracy'])} | - | - | - | - | - | - |")
    for key, e in out["rows"].items():
        r, s = e["row"], e.get("stats", {})
        lines.append(f"| {key} | {_ci(r['style_rate'])} | {_ci(r['judge_accuracy'])} | {_ci(r['drift_fd'])} | "
                     f"{_d(r['forgetting_accuracy'])} | {_ci(r['forgetting_fd'])} | {s.get('trainable', '-'):,} | "
                     f"{s.get('optimizer_bytes', '-'):,} | {e['seconds']:.0f} |"
                     if "trainable" in s else
                     f"| {key} | {_ci(r['style_rate'])} | {_ci(r['judge_accuracy'])} | {_ci(r['drift_fd'])} | "
                     f"{_d(r['forgetting_accuracy'])} | {_ci(r['forgetting_fd'])} | - | - | - |")
    r0_keys = [k for k in out["rows"] if k.startswith("R0")]
    if r0_keys:
        u = out["untuned"].get("digits-fewstep", {}).get("row")
        lines += ["", "R0: reward beside quality (training reward = mean of the last 10 steps' history; eval reward on "
                  "the deterministic 4-step eval samples of 0-4):", "",
                  "| row | training log p(digit) | training thickness | eval log p(digit) | eval thickness | "
                  "style rate | judge accuracy | drift FD-digits | ||theta - theta_0||^2 (last 10) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        if u:
            lines.append(f"| untuned | - | - | {_ci(u['eval_reward_class'])} | {_ci(u['eval_reward_style'])} | "
                         f"{_ci(u['style_rate'])} | {_ci(u['judge_accuracy'])} | - | - |")
        for k in r0_keys:
            e = out["rows"][k]
            h, r = e["history_last10"], e["row"]
            lines.append(f"| {k} | {h['reward_class']:.3f} | {h['reward_style']:.3f} | {_ci(r['eval_reward_class'])} | "
                         f"{_ci(r['eval_reward_style'])} | {_ci(r['style_rate'])} | {_ci(r['judge_accuracy'])} | "
                         f"{_ci(r['drift_fd'])} | {h.get('reg', float('nan')):.4g} |")
    if "DRO, LoRA" in out["rows"] or "DRO, full" in out["rows"]:
        lines += ["", "Diffusion-DRO's hinge: share of active pairs (diff + margin > 0) and mean diff, first and last 10 "
                  "steps:", ""]
        for k in ("DRO, LoRA", "DRO, full", DRO_OWN):
            if k in out["rows"]:
                f, la = out["rows"][k]["history_first10"], out["rows"][k]["history_last10"]
                lines.append(f"- {k}: active {f['active']:.2f} -> {la['active']:.2f}, diff {f['diff']:+.2e} -> "
                             f"{la['diff']:+.2e}")
    lines += ["", "## Paired differences (row minus row, report set, same sample seeds)", "",
              "| difference | style rate | judge accuracy | drift FD-digits | forgetting accuracy | forgetting FD-digits | "
              "eval log p(digit) | eval thickness |", "|---|---|---|---|---|---|---|---|"]
    for name, d in out["paired"].items():
        lines.append(f"| {name} | {_d(d['style_rate'])} | {_d(d['judge_accuracy'])} | {_d(d['drift_fd'])} | "
                     f"{_d(d['forgetting_accuracy'])} | {_d(d['forgetting_fd'])} | {_d(d['eval_reward_class'])} | "
                     f"{_d(d['eval_reward_style'])} |")
    lines += ["", "| row minus untuned | style rate | judge accuracy | eval log p(digit) | eval thickness |",
              "|---|---|---|---|---|"]
    for name, d in out["vs_untuned"].items():
        lines.append(f"| {name} | {_d(d['style_rate'])} | {_d(d['judge_accuracy'])} | {_d(d['eval_reward_class'])} | "
                     f"{_d(d['eval_reward_style'])} |")
    lines += ["", "## Claims (criteria fixed before the run; see the module docstring)", ""]
    lines += [f"- {g}" for g in out["goals"]]
    notes = ["", "## Notes and what was not measured", "",
             "- The `digits-cond` rows (SaRA's own setting) sample with DDIM at 20 steps without classifier-free "
             "guidance (the Tune sampler has none), so their untuned judge accuracy is the unguided model's.",
             "- `SaRA, abs() init (the release's)` is `sara_release_abs=True`; `SaRA, abs() init, untrained` is that "
             "initialisation with no training step: its drift and forgetting are the sign drop's alone.",
             "- Not tuned: LoRA's and SaRA's learning rate (3e-4, the tab's default; SaRA's release derives ~5e-4 from "
             "its threshold), SaRA's share, LoRA's rank; the full rows use the lr selected above (Diffusion-DRO's release "
             "uses 1e-4 on the full UNet). One training seed per row."]
    if out["missing"]:
        notes.append(f"- NOT MEASURED (the run did not reach them): {', '.join(out['missing'])}.")
    if out.get("check_measure"):
        gap = max(abs(v["measure"] - v["bench"]) for v in out["check_measure"].values())
        notes.append(f"- The bench's row figures against `tuning.measure` on one quick run: largest gap {gap:.2e}.")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 5 samples per digit")
    ap.add_argument("--part", choices=("all", "selection", "report", "cond", "timing", "assemble"), default="all",
                    help="one group (two processes may run groups at once; a row one holds the other skips)")
    args = ap.parse_args()
    b = Bench(args.quick)
    if args.part in ("all", "selection"):
        b.selection()
    if args.part in ("all", "report"):
        b.report()
    if args.part in ("all", "cond"):
        b.cond()
    if args.part in ("all", "timing"):
        b.timing()
    if args.part == "selection":  # the report part assembles
        return
    out = b.assemble()
    if args.quick:
        out["check_measure"] = b.check_measure()
    name = "tune-quick" if args.quick else "tune"
    if args.quick:  # a smoke run never overwrites the results
        target = b.cache
    else:
        target = ROOT / "results"
    target.mkdir(exist_ok=True)
    (target / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (target / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
