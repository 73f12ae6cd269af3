"""One Train-tab run of the digits recipe, as a script ``accelerate launch`` starts (so a machine with
several GPUs trains on all of them): ``python -m studio.train.lab --run NAME [switches]``, or
``accelerate launch [--multi_gpu --num_processes N] -m studio.train.lab --run NAME [switches]``.

It trains :class:`studio.train.diffusion.DigitsRecipe` with the given switches in ``runs/NAME`` (resumable),
watched by :class:`studio.train.watch.DigitsWatch` every ``--evaluate-every`` steps, and writes the EMA model
to ``runs/NAME/model`` in the zoo's layout (what the tab registers), also when stopped early (``runs/NAME/STOP``),
with the Gaussian statistics of the training digits beside it (``digits-cond``'s: the same data in the same space),
so the Theory tab can teleport it.
The run's settings are kept in ``runs/NAME/lab.json``; its end, or its error, in ``runs/NAME/result.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback

from studio.train.common import RUNS_DIR

RUN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # run folders are named by the studio, never by a user
SETTINGS_FILE, RESULT_FILE, MODEL_DIR = "lab.json", "result.json", "model"


def parser() -> argparse.ArgumentParser:
    from studio.nets.unets import DIGITS_SIZES
    from studio.train.diffusion import OBJECTIVES

    p = argparse.ArgumentParser(prog="studio.train.lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder name under runs/ (lower-case letters, digits, -)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="rf-lognorm")
    p.add_argument("--size", choices=list(DIGITS_SIZES), default="small")
    p.add_argument("--repa", type=float, default=0.0, help="REPA's lambda (0: off; the paper's 0.5)")
    p.add_argument("--self-condition", action="store_true", help="DDAE++ self-conditioned decoder")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the processes)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate-every", type=int, default=100)
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator

    from studio.train import diffusion
    from studio.train.watch import DigitsWatch

    args = parser().parse_args(argv)
    if not RUN_NAME.match(args.run):
        raise SystemExit(f"--run must be lower-case letters, digits and '-', got {args.run!r}")
    folder = RUNS_DIR / args.run
    state = Accelerator()  # (a bare PartialState would not read ACCELERATE_USE_CPU: CPU processes would each run alone)
    per_process = max(1, args.batch // state.num_processes)
    recipe = diffusion.DigitsRecipe(steps=args.steps, objective=args.objective, size=args.size, repa=args.repa,
                                    self_condition=args.self_condition, batch_size=per_process, lr=args.lr,
                                    warmup=args.warmup, run=args.run)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS_FILE).write_text(json.dumps({**vars(args), "processes": state.num_processes,
                                                        "batch_per_process": per_process}, indent=2))
    try:
        watch = DigitsWatch(n=args.eval_images) if state.is_main_process and args.evaluate_every else None
        result = diffusion.train(recipe, seed=args.seed, checkpoint_every=args.checkpoint_every, export=False,
                                 export_to=folder / MODEL_DIR, evaluate_every=args.evaluate_every, evaluator=watch)
        result["stopped"] = (folder / diffusion.STOP_FILE).exists()
        if state.is_main_process:  # the training digits' Gaussian (as digits-cond's): Theory's teleportation
            import shutil

            from studio.core.loading import GAUSSIAN_FILE, ZOO_DIR

            shutil.copy(ZOO_DIR / "digits-cond" / GAUSSIAN_FILE, folder / MODEL_DIR / GAUSSIAN_FILE)
    except Exception as exc:  # the tab shows the message; the traceback stays in the run's log
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    if state.is_main_process:
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(1 if "error" in main() else 0)
