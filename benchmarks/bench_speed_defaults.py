"""Quality per second: the Generate tab's defaults chosen by the fewest network evaluations at equal quality
(issue 29, part 2), and the zoo's quality under bf16 (part 3).

For each Generate model (``shapes-t2i``: DPM-Solver++ 15 at guidance 2, its ``studio.json`` default;
``digits-cond``: DDIM 20 at guidance 2, the setting ``studio eval digits-cond`` measures) every
setting of :data:`SCHEDULERS` x :data:`STEPS` (diffusers' DPM-Solver++ 2M, UniPC, DDIM and Euler
schedulers), plus analytical teleportation of the first k of the default's steps, is drawn on the
SELECTION set and measured by judges the models did not train with:

* ``shapes-t2i``: the 81 SELECTION prompts (``studio.evaluate.SELECTION_PROMPTS``) x 2, noise seeds
  7000 + i; shape and colour and region (``judge-shapes``), FD-shapes against 1,000 fresh renders;
* ``digits-cond``: 30 of each class, noise seeds 5000 + i; the class ``judge-digits`` reads,
  FD-digits against the 360 held-out test digits.

**The rule**, fixed before the sweep: the setting with the fewest network evaluations (steps -
teleported steps; ties to the lower FD) whose every judge accuracy is at least the default's lower
95% bound and whose FD is at most the default's upper bound, on the selection set. The default
and the chosen setting are then drawn on the REPORT set, which chose nothing (shapes: the other 81
prompts x 2, seeds 2000 + i, as ``studio eval``; digits: seeds 1000 + i, as ``studio eval``), with
paired differences (same prompts, same noise) and their intervals: a difference whose interval
covers 0 is no difference.

**bf16** (autocast on this CPU): the default and the chosen setting are drawn again under bf16 on the
report set; where both judges and FD stay inside the fp32 row's intervals, the model's quality in
bf16 is recorded (``--record`` writes ``"reduced_precision": {"bf16": true}`` into its
``studio.json``); whether bf16 is then *used* is the precision rule's call per machine
(:mod:`studio.core.precision`: only where it is also faster there).

**Seconds** are what a visitor waits: 4 images (the Generate tab's batch) through the same sampler
code, 2 threads, best of 5 after a warm-up (``--time``, run on a quiet machine); the sweep's own
seconds per image (1 thread, large batches, shared machine) are context only. The figure the issue
asks for, images per second at equal quality, is the default's seconds over the chosen's.

Run: ``python benchmarks/bench_speed_defaults.py [--models shapes-t2i digits-cond] [--time] [--record]``;
the sweep resumes from ``runs/bench-cache/speed-defaults``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from studio.core import metrics  # noqa: E402
from studio.core.loading import ZOO_DIR, load_zoo, read_manifest  # noqa: E402
from studio.data import digits, shapes  # noqa: E402
from studio.evaluate import REPORT_PROMPTS, SELECTION_PROMPTS, prompt_conditions, sample_batch  # noqa: E402
from studio.train.common import machine_description  # noqa: E402

SCHEDULERS = ("dpm++", "unipc", "ddim", "euler")
STEPS = (4, 6, 8, 10, 12, 15, 20)
TELEPORT = (3, 6)
GUIDANCE = 2.0
DEFAULTS = {"shapes-t2i": ("dpm++", 15), "digits-cond": ("ddim", 20)}
SEEDS = {"shapes-t2i": {"selection": 7000, "report": 2000}, "digits-cond": {"selection": 5000, "report": 1000}}
CACHE = ROOT.parent / "runs" / "bench-cache" / "speed-defaults"
BATCH = 64


@dataclasses.dataclass(frozen=True)
class Setting:
    scheduler: str
    steps: int
    teleport: int = 0
    precision: str = "fp32"

    @property
    def nfe(self) -> int:
        """Network evaluations per image and guidance branch (the teleported steps cost none)."""
        return self.steps - self.teleport

    @property
    def name(self) -> str:
        tele = f", teleport {self.teleport}" if self.teleport else ""
        return f"{self.scheduler} {self.steps}{tele}" + (f", {self.precision}" if self.precision != "fp32" else "")


def grid(model: str) -> list[Setting]:
    default = Setting(*DEFAULTS[model])
    rows = [Setting(s, n) for s in SCHEDULERS for n in STEPS if n <= default.steps]
    return rows + [dataclasses.replace(default, teleport=k) for k in TELEPORT]


class Task:
    """One model's draws and judges on one split (selection or report)."""

    def __init__(self, model: str, split: str):
        self.model, self.split, self.seed = model, split, SEEDS[model][split]
        self.dm = load_zoo(model)
        if model == "shapes-t2i":
            self.concepts = (SELECTION_PROMPTS if split == "selection" else REPORT_PROMPTS) * 2
            self.cond, self.uncond = prompt_conditions([c["prompt"] for c in self.concepts])
            self.judge, self.fdnet = load_zoo("judge-shapes"), load_zoo("fd-shapes")
            self.real = shapes.to_model_range(shapes.make_dataset(1000, seed=424242)[0])
        else:
            self.labels = torch.arange(10).repeat_interleave(30)
            self.cond = {"class_labels": self.labels}
            self.uncond = {"class_labels": torch.full_like(self.labels, int(self.dm.info.get("null_class", 10)))}
            self.judge, self.fdnet = load_zoo("judge-digits"), load_zoo("fd-digits")
            self.real = torch.from_numpy(digits.load("test").images)
        self.real_features = metrics.features(self.fdnet, self.real)

    @property
    def n(self) -> int:
        return len(self.cond["class_labels"] if "class_labels" in self.cond else self.concepts)

    def draw(self, s: Setting) -> tuple[torch.Tensor, float]:
        dm = dataclasses.replace(self.dm, precision=s.precision)
        t0 = time.perf_counter()
        parts = []
        for i in range(0, self.n, BATCH):
            sl = slice(i, min(i + BATCH, self.n))
            parts.append(sample_batch(dm, {k: v[sl] for k, v in self.cond.items()},
                                      {k: v[sl] for k, v in self.uncond.items()}, GUIDANCE, sl.stop - sl.start,
                                      self.seed + i, s.steps, s.scheduler, s.teleport))
        return torch.cat(parts), (time.perf_counter() - t0) / self.n

    def hits(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """0/1 per image for each judge reading."""
        if self.model == "shapes-t2i":
            h = metrics.shapes_concept_hits(self.judge, x, self.concepts)
            return {"shape_colour": h["shape_colour"].astype(float), "region": h["all"].astype(float)}
        with torch.no_grad():
            pred = self.judge(x.float()).argmax(-1).numpy()
        return {"class": (pred == self.labels.numpy()).astype(float)}

    def measure(self, s: Setting) -> dict:
        x, seconds = self.draw(s)
        feats = metrics.features(self.fdnet, x)
        row = {k: metrics.bootstrap_mean(v).to_dict() for k, v in self.hits(x).items()}
        row["fd"] = metrics.frechet_features(feats, self.real_features).to_dict()
        return {"setting": dataclasses.asdict(s), "nfe": s.nfe, **row,
                "seconds_per_image_sweep": round(seconds, 4), "_x": x, "_features": feats}


def inside(row: dict, ref: dict) -> bool:
    """Every judge reading at least ``ref``'s lower bound and the FD at most its upper bound."""
    judges = [k for k in ref if isinstance(ref[k], dict) and "low" in ref[k] and k != "fd"]
    return all(row[k]["value"] >= ref[k]["low"] for k in judges) and row["fd"]["value"] <= ref["fd"]["high"]


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _cached(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def sweep(model: str) -> dict:
    """The grid on the selection set (cached row by row) and the rule's choice."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{model}-selection.json"
    rows = _cached(path)
    task = None
    for s in grid(model):
        if s.name in rows:
            continue
        task = task or Task(model, "selection")
        rows[s.name] = _public(task.measure(s))
        print(model, "selection", s.name, json.dumps({k: rows[s.name][k] for k in rows[s.name] if k != "setting"}),
              flush=True)
        path.write_text(json.dumps(rows, indent=1))
    default = rows[Setting(*DEFAULTS[model]).name]
    ok = [r for r in rows.values() if inside(r, default)]
    chosen = min(ok, key=lambda r: (r["nfe"], r["fd"]["value"]))
    return {"rows": rows, "default": Setting(*DEFAULTS[model]).name, "chosen": Setting(**chosen["setting"]).name}


def paired(task: Task, a: dict, b: dict) -> dict:
    """b - a on the same prompts and noise: each judge reading and FD, with paired intervals."""
    ha, hb = task.hits(a["_x"]), task.hits(b["_x"])
    out = {k: metrics.bootstrap_mean(hb[k] - ha[k]).to_dict() for k in ha}
    out["fd"] = metrics.frechet_paired_difference(task.real_features, a["_features"], b["_features"]).to_dict()
    return out


def report(model: str, chosen: str) -> dict:
    """Default and chosen, fp32 and bf16, on the report set, with paired differences to the default in fp32."""
    task = Task(model, "report")
    default = Setting(*DEFAULTS[model])
    pick = next(s for s in grid(model) if s.name == chosen)
    settings = {default.name: default, pick.name: pick}
    settings.update({f"{s.name}, bf16": dataclasses.replace(s, precision="bf16") for s in list(settings.values())})
    rows = {name: task.measure(s) for name, s in settings.items()}
    for name, r in rows.items():
        print(model, "report", name, json.dumps({k: v for k, v in _public(r).items() if k != "setting"}), flush=True)
    base = rows[default.name]
    diffs = {name: paired(task, base, r) for name, r in rows.items() if name != default.name}
    bf16_inside = {name: inside(rows[f"{name}, bf16"], rows[name]) for name in (default.name, pick.name)}
    return {"rows": {k: _public(v) for k, v in rows.items()}, "paired_vs_default": diffs,
            "bf16_inside_fp32": bf16_inside, "chosen_inside_default": inside(rows[pick.name], base)}


@torch.no_grad()
def timing(model: str, names: list[str], repeats: int = 5, n: int = 4) -> dict:
    """Seconds for ``n`` images (the Generate tab's batch) per setting: 2 threads, best of ``repeats``
    after a warm-up, the settings taken in turn so drift hits them alike."""
    torch.set_num_threads(2)
    task = Task(model, "report")
    by_name = {s.name: s for s in grid(model)}
    settings = {name: by_name[name] if name in by_name
                else dataclasses.replace(by_name[name.removesuffix(", bf16")], precision="bf16") for name in names}
    cond = {k: v[:n] for k, v in task.cond.items()}
    uncond = {k: v[:n] for k, v in task.uncond.items()}

    def once(s: Setting) -> float:
        dm = dataclasses.replace(task.dm, precision=s.precision)
        t0 = time.perf_counter()
        sample_batch(dm, cond, uncond, GUIDANCE, n, 0, s.steps, s.scheduler, s.teleport)
        return time.perf_counter() - t0

    for s in settings.values():
        once(s)
    best = {name: float("inf") for name in settings}
    for _ in range(repeats):
        for name, s in settings.items():
            best[name] = min(best[name], once(s))
    return {name: round(v, 3) for name, v in best.items()}


def record(model: str, out: dict) -> bool:
    """Write ``reduced_precision.bf16`` into the zoo entry's studio.json when bf16 stayed inside at both settings."""
    ok = all(out["report"]["bf16_inside_fp32"].values())
    path = ZOO_DIR / model / "studio.json"
    info = json.loads(path.read_text())
    info["reduced_precision"] = {"bf16": ok}
    path.write_text(json.dumps(info, indent=2) + "\n")
    return ok


def _ci(e: dict, nd: int = 3) -> str:
    return f"{e['value']:.{nd}f} [{e['low']:.{nd}f}, {e['high']:.{nd}f}]"


def markdown(results: dict) -> str:
    lines = ["# Quality per second: the Generate defaults (issue 29)", "",
             f"{results['machine']}, {results['date']}. Guidance {GUIDANCE}. FD-shapes / FD-digits are the zoo's "
             "own feature nets, not FID. Intervals: 95% bootstrap (FD: bias-corrected). NFE: network "
             "evaluations per image and guidance branch. Rule (fixed before the sweep): the fewest NFE whose "
             "judge readings are at least the default's lower bounds and whose FD is at most the default's "
             "upper bound, on the SELECTION set; then default and chosen on the REPORT set.", ""]
    for model, out in results["models"].items():
        sel = out["selection"]
        judges = [k for k in next(iter(sel["rows"].values())) if k not in ("setting", "nfe", "fd",
                                                                          "seconds_per_image_sweep")]
        lines += [f"## {model}: default {sel['default']}, chosen **{sel['chosen']}**", "",
                  f"Selection set ({out['selection_set']}):", "",
                  "| setting | NFE | " + " | ".join(judges) + " | FD | s / image (sweep, 1 thread) | inside |",
                  "|---|---|" + "---|" * len(judges) + "---|---|---|"]
        ref = sel["rows"][sel["default"]]
        for name, r in sorted(sel["rows"].items(), key=lambda kv: (kv[1]["nfe"], kv[0])):
            mark = "**" if name in (sel["default"], sel["chosen"]) else ""
            lines.append(f"| {mark}{name}{mark} | {r['nfe']} | " + " | ".join(_ci(r[k]) for k in judges)
                         + f" | {_ci(r['fd'], 1)} | {r['seconds_per_image_sweep']} | {'yes' if inside(r, ref) else 'no'} |")
        rep = out["report"]
        lines += ["", f"Report set ({out['report_set']}), with paired differences to the default in fp32 "
                  "(same prompts and noise):", "",
                  "| setting | " + " | ".join(judges) + " | FD | " + " | ".join(f"d {k}" for k in judges)
                  + " | d FD |", "|---|" + "---|" * (2 * len(judges) + 2)]
        for name, r in rep["rows"].items():
            d = rep["paired_vs_default"].get(name)
            dcells = " | ".join(_ci(d[k]) for k in judges) + f" | {_ci(d['fd'], 1)}" if d else \
                " | ".join("" for _ in judges) + " | "
            lines.append(f"| {name} | " + " | ".join(_ci(r[k]) for k in judges) + f" | {_ci(r['fd'], 1)} | {dcells} |")
        lines += ["", f"Chosen inside the default's report intervals: **{rep['chosen_inside_default']}**; "
                  f"bf16 inside fp32's: {rep['bf16_inside_fp32']}."]
        if "seconds" in out:
            t = out["seconds"]
            lines += ["", f"Seconds for 4 images ({out['seconds_machine']}): "
                      + ", ".join(f"{k} **{v}**" for k, v in t.items()) + "; images per second at equal quality, "
                      f"chosen vs default: **{t[sel['default']] / t[sel['chosen']]:.2f}x**."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULTS), choices=list(DEFAULTS))
    ap.add_argument("--time", action="store_true", help="only time the default, the chosen and their bf16 (quiet machine)")
    ap.add_argument("--record", action="store_true", help="write the bf16 verdict into the zoo entries' studio.json")
    args = ap.parse_args()
    path = ROOT / "results" / "speed_defaults.json"
    results = _cached(path) or {"models": {}}
    for model in args.models:
        if args.time:
            out = results["models"][model]
            names = [out["selection"]["default"], out["selection"]["chosen"]]
            out["seconds"] = timing(model, names + [f"{n}, bf16" for n in names])
            out["seconds_machine"] = machine_description() + ", 2 threads, " + time.strftime("%Y-%m-%d %H:%M")
        else:
            torch.set_num_threads(1)
            sel = sweep(model)
            out = {"selection": sel, "report": report(model, sel["chosen"]),
                   "selection_set": "81 SELECTION prompts x 2, seeds 7000 + i" if model == "shapes-t2i"
                   else "30 per class, seeds 5000 + i",
                   "report_set": "81 REPORT prompts x 2, seeds 2000 + i" if model == "shapes-t2i"
                   else "30 per class, seeds 1000 + i",
                   "model_sha": next(v["sha256"][:12] for k, v in read_manifest()[model]["files"].items()
                                     if k.endswith(".safetensors"))}
            results.setdefault("models", {})[model] = {**results.get("models", {}).get(model, {}), **out}
            results["machine"] = machine_description() + ", 1 thread (sweep)"
            results["date"] = time.strftime("%Y-%m-%d")
        if args.record:
            print(model, "bf16 recorded inside fp32:", record(model, results["models"][model]))
        path.write_text(json.dumps(results, indent=2) + "\n")
        (ROOT / "results" / "speed_defaults.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
