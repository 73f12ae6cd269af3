"""Shapes world: procedural RGB scenes with exact labels.

A scene is a ``size`` x ``size`` RGB image (default 32 x 32) on a black background with 1 to 3
objects. Each object has a shape (circle / square / triangle), one of six well-separated
colours, a continuous centre and a radius. The image is cut into a 3 x 3 grid of *regions*;
objects sit in distinct regions and never leave their region, so they never overlap and each
region holds at most one object. That makes the labels exact: the judge reads a scene as nine
cells, each empty or holding one (shape, colour).

Each object has a caption ("a red circle at the top left"). As in the CLEVR setup of
Composable Diffusion, a training pair is an image with the caption of *one* of its objects, so a
model learns per-object concepts that can later be composed. Rendering is deterministic given a
seed (4x supersampling, box-filtered down).

Held-out combinations: :data:`HELD_OUT_PAIRS` pairs every (shape, colour) *kind* with one
partner, and the training recipe draws scenes with ``exclude=HELD_OUT_PAIRS``, so no training
image ever holds both objects of a pair. Compositions of such a pair test compositional
generalisation honestly (the Compose benchmark builds its k = 2 and k = 3 sets from them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw

Shape = Literal["circle", "square", "triangle"]
Colour = Literal["red", "green", "blue", "yellow", "cyan", "magenta"]

SHAPES: tuple[str, ...] = get_args(Shape)
COLOURS: tuple[str, ...] = get_args(Colour)
RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 240),
    "yellow": (235, 225, 30),
    "cyan": (30, 220, 225),
    "magenta": (225, 40, 220),
}
# Region index r = 3 * row + col, row 0 at the top.
REGIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
IMAGE_SIZE = 32
RADIUS_RANGE = (3.0, 5.0)  # pixels at 32 x 32; "small" below 4.0
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    region: int  # 0..8, see REGIONS
    cx: float  # centre, pixels from the left
    cy: float  # centre, pixels from the top
    radius: float  # pixels

    @property
    def size_word(self) -> str:
        return "small" if self.radius < 4.0 else "large"

    def caption(self, drop: Literal["none", "colour", "shape", "region"] = "none") -> str:
        """Caption of this object; ``drop`` leaves one attribute out (partial concept)."""
        return concept_caption(
            shape=None if drop == "shape" else self.shape,
            colour=None if drop == "colour" else self.colour,
            region=None if drop == "region" else self.region,
        )


def concept_caption(shape: str | None, colour: str | None, region: int | None) -> str:
    """'a red circle at the top left'; missing attributes are left out ('a circle', 'a red shape')."""
    words = ["a"]
    if colour is not None:
        words.append(colour)
    words.append(shape if shape is not None else "shape")
    text = " ".join(words)
    if region is not None:
        text += f" at the {REGIONS[region]}"
    return text


def parse_concept(text: str) -> dict | None:
    """The shapes-world attributes a caption names: ``{"shape", "colour", "region"}`` (None where
    not named), or None when it names none of them (the judge cannot grade it). The inverse of
    :func:`concept_caption` for every caption it writes; other wording is read word by word."""
    words = text.lower().replace(",", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    region = None
    joined = " " + " ".join(words) + " "
    for r in sorted(range(9), key=lambda i: -len(REGIONS[i])):  # "top left" before "top"
        if f" the {REGIONS[r]} " in joined:
            region = r
            break
    if shape is None and colour is None and region is None:
        return None
    return {"shape": shape, "colour": colour, "region": region}


def all_captions() -> list[str]:
    """Every caption the training recipe can produce, empty caption first."""
    caps = [""]
    for s in (*SHAPES, None):
        for c in (*COLOURS, None):
            for r in (*range(9), None):
                if [s, c, r].count(None) > 1:
                    continue
                caps.append(concept_caption(s, c, r))
    return caps


Kind = tuple[str, str]  # (shape, colour)

# A perfect matching of the 18 kinds: each kind never shares a training image with its partner.
HELD_OUT_PAIRS: tuple[tuple[Kind, Kind], ...] = (
    (("circle", "red"), ("square", "blue")),
    (("circle", "green"), ("triangle", "magenta")),
    (("circle", "blue"), ("triangle", "yellow")),
    (("circle", "yellow"), ("square", "cyan")),
    (("circle", "cyan"), ("triangle", "red")),
    (("circle", "magenta"), ("square", "green")),
    (("square", "red"), ("triangle", "cyan")),
    (("square", "yellow"), ("triangle", "green")),
    (("square", "magenta"), ("triangle", "blue")),
)


def holds_pair(kinds, pairs=HELD_OUT_PAIRS) -> bool:
    """Whether the (shape, colour) kinds include both members of any pair in ``pairs``."""
    have = set(kinds)
    return any(a in have and b in have for a, b in pairs)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    size: int = IMAGE_SIZE

    def to_dict(self) -> dict:
        return {"size": self.size, "objects": [asdict(o) for o in self.objects]}

    @property
    def kinds(self) -> list[Kind]:
        return [(o.shape, o.colour) for o in self.objects]

    def cell_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(shape index + 1 or 0 for empty, colour index or -1) for each of the 9 regions."""
        shape = np.zeros(9, dtype=np.int64)
        colour = np.full(9, -1, dtype=np.int64)
        for o in self.objects:
            shape[o.region] = SHAPES.index(o.shape) + 1
            colour[o.region] = COLOURS.index(o.colour)
        return shape, colour


def region_of(cx: float, cy: float, size: int = IMAGE_SIZE) -> int:
    col = min(int(3 * cx / size), 2)
    row = min(int(3 * cy / size), 2)
    return 3 * row + col


def random_scene(rng: np.random.Generator, n_objects: int | None = None, size: int = IMAGE_SIZE,
                 exclude: tuple[tuple[Kind, Kind], ...] = ()) -> Scene:
    """Draw 1 to 3 objects in distinct regions, each fully inside its region.

    ``exclude``: pairs of kinds that must not share the scene (redrawn until none does).
    """
    while True:
        scene = _draw_scene(rng, n_objects, size)
        if not exclude or not holds_pair(scene.kinds, exclude):
            return scene


def _draw_scene(rng: np.random.Generator, n_objects: int | None, size: int) -> Scene:
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    if not 1 <= n <= 9:
        raise ValueError(f"a scene holds 1 to 9 objects, got {n}")
    objects = []
    for region in rng.choice(9, size=n, replace=False):
        r, cx, cy = place(rng, int(region), size)
        objects.append(ShapeObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=COLOURS[int(rng.integers(len(COLOURS)))],
            region=int(region), cx=cx, cy=cy, radius=r,
        ))
    return Scene(tuple(objects), size)


def place(rng: np.random.Generator, region: int, size: int = IMAGE_SIZE) -> tuple[float, float, float]:
    """A random radius and centre (pixels) for an object wholly inside ``region`` of a ``size`` image."""
    row, col = divmod(region, 3)
    cell = size / 3
    r = float(rng.uniform(*RADIUS_RANGE)) * size / IMAGE_SIZE
    cx = float(rng.uniform(col * cell + r, (col + 1) * cell - r))
    cy = float(rng.uniform(row * cell + r, (row + 1) * cell - r))
    return r, cx, cy


def rescale(scene: Scene, size: int) -> Scene:
    """The same scene at ``size`` x ``size`` pixels: every centre and radius scaled by ``size / scene.size``
    (the shapes world is procedural, so its true image exists at every resolution)."""
    k = size / scene.size
    return Scene(tuple(replace(o, cx=o.cx * k, cy=o.cy * k, radius=o.radius * k) for o in scene.objects), size)


def render(scene: Scene, fill: tuple[int, int, int] | None = None, hollow: float = 0.0) -> np.ndarray:
    """(size, size, 3) uint8 RGB image of the scene. ``fill`` overrides every object's colour and
    ``hollow`` > 0 draws outlines of that width in pixels (the Subject tab's unseen attribute combinations)."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (scene.size * k, scene.size * k), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_object(draw, o, k, fill or RGB[o.colour], round(hollow * k))
    img = img.resize((scene.size, scene.size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def render_tensor(scene: Scene, size: int | None = None):
    """The scene rendered at ``size`` (default its own) as a (1, 3, size, size) float tensor in [-1, 1]."""
    scene = scene if size is None else rescale(scene, size)
    return to_model_range(render(scene).transpose(2, 0, 1)[None].copy())


def _draw_object(draw: ImageDraw.ImageDraw, o: ShapeObject, k: int, fill: tuple[int, int, int], width: int) -> None:
    """One object at supersampling ``k``: filled, or an outline ``width`` pixels wide when ``width`` > 0."""
    cx, cy, r = o.cx * k, o.cy * k, o.radius * k
    style = {"outline": fill, "width": width} if width else {"fill": fill}
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **style)
    elif o.shape == "square":
        h = 0.9 * r  # similar area to the circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], **style)
    else:  # equilateral triangle pointing up, inscribed in a slightly larger circle
        R = 1.15 * r
        pts = [(cx + R * math.cos(a), cy - R * math.sin(a))
               for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        draw.polygon(pts, **style)


def make_dataset(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Scene]]:
    """``n`` scenes drawn from ``seed``: images (n, 3, size, size) uint8 and their scenes."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, size=size) for _ in range(n)]
    images = np.stack([render(s) for s in scenes]).transpose(0, 3, 1, 2).copy()
    return images, scenes


def to_model_range(images_uint8: np.ndarray):
    """uint8 (N, 3, H, W) -> float tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(images_uint8).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------- questions about a scene
# (the Classify tab's candidate sets)

def question_candidates(obj: ShapeObject, question: str) -> tuple[list[str], int]:
    """Candidates that differ from the object's full caption only in the asked attribute (the
    others as they are), and the index of the true one. ``caption``: every shape and colour at its region."""
    if question == "shape":
        options = [(s, obj.colour, obj.region) for s in SHAPES]
    elif question == "colour":
        options = [(obj.shape, c, obj.region) for c in COLOURS]
    elif question == "region":
        options = [(obj.shape, obj.colour, r) for r in range(9)]
    else:
        options = [(s, c, obj.region) for s in SHAPES for c in COLOURS]
    return [concept_caption(*o) for o in options], options.index((obj.shape, obj.colour, obj.region))


# Binding tasks (Self-Bench style, Jeong et al. 2025): a two-object scene and candidates that name
# only attributes present in the scene, so that what tells them apart is which attribute belongs to
# which object. Object A is the one asked about, B the other (distinct shape, colour and region).
BINDING: dict[str, str] = {
    "bind colour": "the colour of A's shape: 'a <A's colour> <A's shape>' vs 'a <B's colour> <A's shape>'",
    "bind shape": "the shape at A's region: 'a <A's shape> at <A's region>' vs 'a <B's shape> at <A's region>'",
    "bind object": "which shape has A's colour: 'a <A's colour> <A's shape>' vs 'a <A's colour> <B's shape>'",
    "bind place": "the colour at A's region: 'a <A's colour> <A's shape> at <A's region>' vs "
                  "'a <B's colour> <A's shape> at <A's region>'",
}


def binding_candidates(a: ShapeObject, b: ShapeObject, task: str) -> list[str]:
    """The two candidates of a binding task, the true one first (see :data:`BINDING`)."""
    if task == "bind colour":
        return [concept_caption(a.shape, a.colour, None), concept_caption(a.shape, b.colour, None)]
    if task == "bind shape":
        return [concept_caption(a.shape, None, a.region), concept_caption(b.shape, None, a.region)]
    if task == "bind object":
        return [concept_caption(a.shape, a.colour, None), concept_caption(b.shape, a.colour, None)]
    if task == "bind place":
        return [concept_caption(a.shape, a.colour, a.region), concept_caption(a.shape, b.colour, a.region)]
    raise ValueError(f"unknown binding task {task!r}; choose one of {', '.join(BINDING)}")


def binding_scene(seed: int) -> Scene:
    """A two-object scene whose objects differ in shape, colour and region (no held-out pair, as in
    training), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    while True:
        scene = random_scene(rng, n_objects=2, exclude=HELD_OUT_PAIRS)
        a, b = scene.objects
        if a.shape != b.shape and a.colour != b.colour:
            return scene
