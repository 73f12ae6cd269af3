"""Run by ``accelerate launch`` in tests/test_accelerate.py: a recipe shrunk to a few steps; every process writes
what it ends with to ``$OUT/rank<i>.json`` (``$OUT/rank<i>-<recipe>.json`` for the others).

``python accelerate_tiny.py STEPS`` : the digits recipe (rectified flow, a tiny UNet, batch 4 per process);
``python accelerate_tiny.py STEPS others`` : the digits judge (a narrow DigitsNet, exported into ``$OUT/zoo``, never
the studio's zoo) and plain IGN (a tiny UNet, batch 8 per process), one after the other."""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from tests.conftest import tiny_digits_unet

torch.set_flush_denormal(True)  # the tiny UNets' steps run several times slower on denormal floats on a CPU

steps = int(sys.argv[1])
out = Path(os.environ["OUT"])
rank = lambda: PartialState().process_index  # noqa: E731 (after the recipe's Accelerator set up the processes)
if len(sys.argv) < 3:
    from studio.train import diffusion

    recipe = diffusion.DigitsRecipe(steps=50, variant="rf-lognorm")
    recipe.make_model, recipe.batch_size = tiny_digits_unet, 4
    result = diffusion.train(recipe, until=steps, export=False, checkpoint_every=10_000)
    (out / f"rank{rank()}.json").write_text(json.dumps(result))
else:
    from studio.nets import unets
    from studio.nets.judges import DigitsNet
    from studio.train import judges, sign

    judges.ZOO_DIR = out / "zoo"
    judges.write_manifest_entry = lambda *args, **kwargs: None  # the MANIFEST stays untouched
    judges.SPECS["judge-digits"] = (DigitsNet, {"width": 4, "feature_dim": 8}, 11, steps)
    result = judges.train("judge-digits")
    (out / f"rank{rank()}-judge-digits.json").write_text(json.dumps(result))

    unets.digits_unet, sign.BATCH = tiny_digits_unet, 8
    result = sign.train("ign-digits", warmup=0, joint=steps, export=False, progress=False, checkpoint_every=1)
    (out / f"rank{rank()}-ign-digits.json").write_text(json.dumps(result))
