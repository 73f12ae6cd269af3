"""Recipes for the measuring instruments: ``judge-digits``, ``fd-digits``, ``judge-shapes``, ``fd-shapes``.

They are trained on real data only (the digits training split; fresh shapes renders), never on
samples of a generator, and with their own seeds, so no method grades its own homework. Light
augmentation (shifts, pixel noise, colour jitter; for the shapes judge also background offsets
and tints and slight blur, :func:`augment_shapes`) makes them read imperfect samples sensibly.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.data import digits, shapes
from studio.nets.judges import DigitsNet, ShapesGridNet
from studio.train.common import (ZOO_DIR, StepLog, Timer, machine_description, make_accelerator, optimizer_step,
                                 process_entropy, process_seed, random_shift, weights_digest, write_manifest_entry)

SPECS = {
    #  name            net class       config                                   seed  steps
    "judge-digits": (DigitsNet, {"width": 32, "feature_dim": 64}, 11, 2000),
    "fd-digits": (DigitsNet, {"width": 24, "feature_dim": 64}, 12, 2000),
    "judge-shapes": (ShapesGridNet, {"width": 16, "feature_dim": 256}, 13, 2000),
    "fd-shapes": (ShapesGridNet, {"width": 16, "feature_dim": 128}, 14, 1200),
}
SHAPES_TEST_SEED = 987_654  # held-out renders; training renders use other seeds


def _digits_batch(gen: torch.Generator, data: digits.DigitsSplit, n: int = 128):
    idx = torch.randint(len(data.labels), (n,), generator=gen)
    x = random_shift(torch.from_numpy(data.images[idx.numpy()]), gen, 1)
    x = x + 0.1 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x, torch.from_numpy(data.labels[idx.numpy()])


# What generators get wrong, as ranges the shapes judge is trained across (on renders only):
MAX_OFFSET = 0.35   # the background lifted from black (DDIM samples of the first shapes-t2i: about +0.2)
MAX_TINT = 0.06     # channels lifted unequally (a tinted background), each by up to this much either way
MAX_GRAIN = 0.2     # per-pixel Gaussian grain, std drawn per image from [0, MAX_GRAIN]
BLUR_SHARE = 0.5    # images blurred with a 3 x 3 Gaussian of sigma in [0.3, 0.9]


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3 x 3 Gaussian blur per image (``sigma``: one per image), edges replicated."""
    d = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-d[None] ** 2 / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k = (k1[:, :, None] * k1[:, None, :])  # (n, 3, 3)
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate").reshape(1, n * c, h + 2, w + 2)
    weight = k.repeat_interleave(c, 0)[:, None]  # (n c, 1, 3, 3)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def augment_shapes(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The judge's training augmentation: colour jitter, background offset and tint, slight blur,
    grain. Real renders only ever pass through it; no generator's sample is used."""
    n = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen)
    x = (x + 1) * (1 + 0.15 * (2 * u(n, 3, 1, 1) - 1)) - 1  # colour jitter (keeps black black)
    x = x + MAX_OFFSET * u(n, 1, 1, 1) + MAX_TINT * (2 * u(n, 3, 1, 1) - 1)  # offset and tint
    blurred = u(n) < BLUR_SHARE
    if blurred.any():
        x[blurred] = blur(x[blurred], 0.3 + 0.6 * u(int(blurred.sum())))
    x = x.clamp(-1, 1)
    return x + MAX_GRAIN * u(n, 1, 1, 1) * torch.randn(x.shape, generator=gen)


def perturb(x: torch.Tensor, offset: float, grain: float, seed: int = 0) -> torch.Tensor:
    """Renders as a rough generator draws them: lifted by ``offset`` with Gaussian ``grain``."""
    gen = torch.Generator().manual_seed(seed)
    return (x + offset).clamp(-1, 1) + grain * torch.randn(x.shape, generator=gen)


def _shapes_batch(rng: np.random.Generator, gen: torch.Generator, n: int = 128, augment: bool = True):
    imgs, scenes = shapes.make_dataset(n, int(rng.integers(2**31)))
    x = shapes.to_model_range(imgs)
    if augment:
        x = augment_shapes(x, gen)
    labels = [s.cell_labels() for s in scenes]
    return x, torch.from_numpy(np.stack([l[0] for l in labels])), torch.from_numpy(np.stack([l[1] for l in labels]))


def shapes_loss(net: ShapesGridNet, x, shape_y, colour_y) -> torch.Tensor:
    s, c = net(x)
    loss = F.cross_entropy(s.reshape(-1, s.shape[-1]), shape_y.reshape(-1))
    occupied = colour_y.reshape(-1) >= 0
    return loss + F.cross_entropy(c.reshape(-1, c.shape[-1])[occupied], colour_y.reshape(-1)[occupied])


@torch.no_grad()
def evaluate_digits(net: DigitsNet) -> float:
    """Accuracy on the fixed 360-image test split."""
    test = digits.load("test")
    net.eval()
    pred = net(torch.from_numpy(test.images)).argmax(-1).numpy()
    return float((pred == test.labels).mean())


PERTURBED = {"offset": 0.18, "grain": 0.085}  # issue 20's check: the first shapes-t2i's DDIM backgrounds


@torch.no_grad()
def evaluate_shapes(net: ShapesGridNet, n: int = 2000) -> dict:
    """Held-out renders, clean and perturbed (:data:`PERTURBED`): per-object accuracy (shape,
    colour and region all right), empty-cell accuracy, and the phantom rate (empty cells read as
    holding an object) on the perturbed ones."""
    imgs, scenes = shapes.make_dataset(n, SHAPES_TEST_SEED)
    x = shapes.to_model_range(imgs)
    out = read_accuracy(net, x, scenes)
    rough = read_accuracy(net, perturb(x, **PERTURBED), scenes)
    out.update({"perturbed": PERTURBED, "perturbed_object_accuracy": rough["object_accuracy"],
                "perturbed_empty_cell_accuracy": rough["empty_cell_accuracy"],
                "perturbed_phantom_rate": 1 - rough["empty_cell_accuracy"]})
    return out


@torch.no_grad()
def read_accuracy(net: ShapesGridNet, x: torch.Tensor, scenes: list) -> dict:
    net.eval()
    shape_cells, colour_cells = net.read(x)
    obj_ok, empty_ok, n_obj, n_empty = 0, 0, 0, 0
    for i, scene in enumerate(scenes):
        s_true, c_true = scene.cell_labels()
        for r in range(9):
            if s_true[r] == 0:
                n_empty += 1
                empty_ok += int(shape_cells[i, r] == 0)
            else:
                n_obj += 1
                obj_ok += int(shape_cells[i, r] == s_true[r] and colour_cells[i, r] == c_true[r])
    return {"object_accuracy": obj_ok / n_obj, "empty_cell_accuracy": empty_ok / n_empty, "n_scenes": len(scenes)}


def train(name: str, seed: int | None = None, steps: int | None = None) -> dict:
    """Train the judge ``name`` and export it (main process). Under ``accelerate launch`` each process
    draws its own batches (process 0 the one-process run's stream) and the gradients are averaged;
    ``runs/<name>/loss.jsonl`` logs the loss per step, averaged over processes."""
    cls, config, default_seed, default_steps = SPECS[name]
    seed = default_seed if seed is None or seed == 0 else seed
    steps = steps or default_steps
    accelerator = make_accelerator()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(process_seed(seed, accelerator))
    rng = np.random.default_rng(process_entropy(accelerator, seed))
    net = cls(**config)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net, opt = accelerator.prepare(net, opt)
    device = accelerator.device
    data = digits.load("train") if cls is DigitsNet else None
    log = StepLog(accelerator, name)
    timer = Timer()
    net.train()
    for step in tqdm(range(steps), desc=name, disable=not accelerator.is_main_process):
        if data is not None:
            x, y = _digits_batch(gen, data)
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
        else:
            loss = shapes_loss(net, *(v.to(device) for v in _shapes_batch(rng, gen)))
        optimizer_step(loss, opt, clip=None, scheduler=sched, accelerator=accelerator)
        log.write(step + 1, loss)
    seconds = timer.seconds
    net = accelerator.unwrap_model(net).cpu().eval()
    result = {"name": name, "seconds": round(seconds, 1), "processes": accelerator.num_processes,
              "weights_sha256": weights_digest(net)}
    if not accelerator.is_main_process:  # the export (and its evaluation) is the main process's
        return result
    quality = ({"test_accuracy": evaluate_digits(net), "test_images": 360} if data is not None
               else evaluate_shapes(net))
    folder = ZOO_DIR / name
    net.save_pretrained(folder / "model", safe_serialization=True)
    (folder / "studio.json").write_text(json.dumps(
        {"kind": "judge", "model_class": cls.__name__, "domain": "digits" if data is not None else "shapes"},
        indent=2) + "\n")
    write_manifest_entry(name, {"recipe": f"studio train {name}", "kind": "judge", "train_steps": steps,
                                "train_seconds": round(seconds, 1), "machine": machine_description(),
                                "seed": seed, "quality": quality})
    return {**result, **quality}
