"""``studio launch | train | eval | bench``: the command line.

``accelerate launch -m studio.cli train <name>`` runs a recipe on several GPUs unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="studio", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="launch the Gradio studio (offline, embedded models)")
    p.add_argument("--host", default=None, help="default $GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--model", action="append", default=[], metavar="FOLDER_OR_HUB_ID",
                   help="also offer this diffusers model folder (or hub id, when online); repeatable")
    p = sub.add_parser("train", help="rebuild a zoo entry (resumable: run again to continue)")
    p.add_argument("name")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long (a checkpoint is kept)")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--resume-from-zoo", action="store_true",
                   help="diffusion models: with no checkpoint in runs/, continue from the shipped weights")
    p.add_argument("--variant", default="", help="a side-by-side recipe variant, kept in runs/ (shapes-t2i: recipe "
                   "changes; digits-cond: objectives eps, v, rf-uniform, rf-lognorm, rf-mode, rf-cosmap, and "
                   "rf-uniform-repa (REPA), eps-selfcond (DDAE++ self-conditioning); any switch mix: python -m studio.train.lab)")
    p.add_argument("--gaussian-stats", action="store_true",
                   help="digits-cond / shapes-t2i: only (re)compute the Gaussian statistics of its training data "
                        "beside the entry (teleportation; seconds, no training); with --images, NAME is a "
                        "diffusion model folder and the statistics are those of the images (latents for latent models)")
    p.add_argument("--images", default=None, metavar="FOLDER", help="with --gaussian-stats: a folder of images")
    p.add_argument("--rank", type=int, default=256, help="with --images: eigen-directions kept (plus a residual)")
    p = sub.add_parser("eval", help="measure a zoo diffusion model with the judges; writes MANIFEST quality")
    p.add_argument("name", choices=["digits-cond", "shapes-t2i", "var-shapes", "ddmi-shapes"])
    p.add_argument("--no-write", action="store_true")
    sub.add_parser("bench", help="run the benchmarks in benchmarks/ (writes benchmarks/results)")
    args = parser.parse_args(argv)

    if args.command == "launch":
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        from components import launch
        from studio.core.adapters import register_saved
        from studio.core.manager import default_manager

        manager = default_manager()
        register_saved(manager)  # tuned models saved in earlier sessions (as build_app does without a manager)
        for source in args.model:
            manager.add_source(source)
        options = {"server_name": args.host, "server_port": args.port}
        launch(manager, **{k: v for k, v in options.items() if v is not None})
        return 0
    if args.command == "train":
        from studio import train
        from studio.core.device import set_threads

        set_threads(args.threads)
        if args.gaussian_stats:
            from studio.train import gaussian

            out = (gaussian.folder_stats(args.name, args.images, args.rank) if args.images
                   else gaussian.write_stats(args.name))
            print(json.dumps(out, indent=2))
            return 0
        print(json.dumps(train.run(args.name, minutes=args.minutes, steps=args.steps, seed=args.seed,
                                   resume_from_zoo=args.resume_from_zoo, variant=args.variant), indent=2))
        return 0
    if args.command == "eval":
        from studio import evaluate

        result = evaluate.run(args.name, write=not args.no_write)
        print(evaluate.summary_table(result, args.name))
        return 0
    if args.command == "bench":
        import runpy
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent / "benchmarks"
        for script in sorted(root.glob("bench_*.py")):
            print(f"== {script.name}", flush=True)
            runpy.run_path(str(script), run_name="__main__")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
