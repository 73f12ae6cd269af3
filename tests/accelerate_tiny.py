"""Run by ``accelerate launch`` in tests/test_accelerate.py: the digits recipe (rectified flow, a tiny UNet,
batch 4 per process) for a few steps; every process writes what it ends with to ``$OUT/rank<i>.json``."""

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState

from studio.train import diffusion
from tests.conftest import tiny_digits_unet

steps = int(sys.argv[1])
recipe = diffusion.DigitsRecipe(steps=50, variant="rf-lognorm")
recipe.make_model, recipe.batch_size = tiny_digits_unet, 4
result = diffusion.train(recipe, until=steps, export=False, checkpoint_every=10_000)
state = PartialState()
(Path(os.environ["OUT"]) / f"rank{state.process_index}.json").write_text(json.dumps(result))
