"""The biased shapes world (the Debias tab): most circles are red, most squares blue, and most
captions leave the colour out, so "a circle" comes out red.

A fixed training set of :data:`N_TRAIN` one-object scenes of the shapes world (:mod:`studio.data.shapes`):

* **circles** are red with probability :data:`BIAS` and blue otherwise; **squares** blue with
  probability :data:`BIAS` and red otherwise (the *spurious correlation*: shape -> colour);
* **triangles** take any of the six colours uniformly (the control: no bias to remove);
* each caption is drawn once and kept: the shape alone ("a circle", :data:`SHAPE_ONLY`), the shape
  and its region ("a circle at the top left", :data:`NO_COLOUR`), or the full caption ("a red circle
  at the top left", the rest). Most captions omit the colour, as web captions omit the obvious.

The true attribute (each object's colour, and whether it is its shape's minority colour) is
recorded for **measuring only** (the bias score, the purity of inferred groups, the oracle's hard
groups); InvDiff itself never reads it. Building the set is deterministic given :data:`SEED`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from studio.data import shapes

N_TRAIN = 3000
SEED = 2611
BIAS = 0.9  # share of circles that are red, and of squares that are blue
MAJORITY = {"circle": "red", "square": "blue"}  # each biased shape's majority colour
MINORITY = {"circle": "blue", "square": "red"}  # ... and its only other colour
BIASED_SHAPES = tuple(MAJORITY)
SHAPE_ONLY, NO_COLOUR = 0.25, 0.5  # caption mix: shape alone, shape + region; the rest name the colour
PROMPTS = ("a circle", "a square")  # the prompts the bias is measured on (they never name a colour)
PROMPT_COLOURS = ("red", "blue")  # the attribute classes of the bias score (K = 2)


@dataclass(frozen=True)
class BiasedSet:
    images: np.ndarray  # (N, 3, 32, 32) uint8
    captions: tuple[str, ...]  # (N,), the one caption each image is trained with
    shape: tuple[str, ...]  # (N,), measuring only
    colour: tuple[str, ...]  # (N,), measuring only
    minority: np.ndarray  # (N,) bool: a blue circle or a red square (measuring only)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def true_groups(self) -> np.ndarray:
        """(N,) int: 0 triangle, 1 majority circle or square, 2 minority (the oracle's hard groups)."""
        biased = np.array([s in MAJORITY for s in self.shape])
        return np.where(~biased, 0, np.where(self.minority, 2, 1))


def draw_object(rng: np.random.Generator, bias: float = BIAS) -> tuple[shapes.ShapeObject, str]:
    """One object of the biased world in a random region, and its caption."""
    scene = shapes.random_scene(rng, n_objects=1)
    obj = scene.objects[0]
    if obj.shape in MAJORITY:
        colour = MAJORITY[obj.shape] if rng.random() < bias else MINORITY[obj.shape]
        obj = shapes.ShapeObject(obj.shape, colour, obj.region, obj.cx, obj.cy, obj.radius)
    u = rng.random()
    if u < SHAPE_ONLY:
        caption = shapes.concept_caption(obj.shape, None, None)
    elif u < SHAPE_ONLY + NO_COLOUR:
        caption = obj.caption(drop="colour")
    else:
        caption = obj.caption()
    return obj, caption


@functools.lru_cache(maxsize=2)
def training_set(n: int = N_TRAIN, seed: int = SEED, bias: float = BIAS) -> BiasedSet:
    """The fixed biased training set (cached; read-only arrays)."""
    rng = np.random.default_rng(seed)
    objects, captions = zip(*(draw_object(rng, bias) for _ in range(n)))
    images = np.stack([shapes.render(shapes.Scene((o,))) for o in objects]).transpose(0, 3, 1, 2).copy()
    minority = np.array([MINORITY.get(o.shape) == o.colour for o in objects])
    images.flags.writeable = minority.flags.writeable = False
    return BiasedSet(images, tuple(captions), tuple(o.shape for o in objects), tuple(o.colour for o in objects),
                     minority)

