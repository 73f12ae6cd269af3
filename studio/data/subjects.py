"""Subjects for the Subject tab: attribute combinations the shapes world never shows.

A subject is one object kind drawn in a way no training image of the shapes world holds: an
off-palette hue (orange), or an outline instead of a filled shape. :func:`images` renders its
``n`` pictures at different regions and sizes (the few photos a person would give ARBooth), each
a 32 x 32 scene with that one object, reproducibly from the subject's seed.

Subjects are split as every studio benchmark splits its items: settings (learning rate,
iterations) are chosen on :data:`SELECTION` and figures reported on :data:`REPORT`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studio.data import shapes


@dataclass(frozen=True)
class Subject:
    id: str
    label: str                      # what a person reads ("an orange square")
    shape: str                      # its class word: the class prompt is "a <shape>"
    fill: tuple[int, int, int]      # RGB
    hollow: float = 0.0             # outline width in pixels (0: filled)
    seed: int = 0


SUBJECTS: dict[str, Subject] = {s.id: s for s in (
    Subject("orange-square", "an orange square (a hue the world never shows)", "square", (255, 140, 0), seed=11),
    Subject("hollow-red-square", "a hollow red square (an outline, never seen)", "square", shapes.RGB["red"],
            hollow=1.25, seed=12),
    Subject("pink-circle", "a pink circle (a hue the world never shows)", "circle", (255, 150, 190), seed=13),
    Subject("hollow-green-triangle", "a hollow green triangle (an outline, never seen)", "triangle",
            shapes.RGB["green"], hollow=1.25, seed=14),
)}
SELECTION = ("pink-circle", "hollow-green-triangle")   # where tuning settings are chosen
REPORT = ("orange-square", "hollow-red-square")        # where figures are reported
DEFAULT = "orange-square"
N_IMAGES = 4
SUBJECT_REGIONS = (0, 2, 4, 7)  # top left, top right, center, bottom: four different places


def scenes(subject: Subject, n: int = N_IMAGES, regions=SUBJECT_REGIONS, seed: int | None = None) -> list[shapes.Scene]:
    """``n`` one-object scenes of the subject, at ``regions`` in turn, random size and position inside."""
    rng = np.random.default_rng(subject.seed if seed is None else seed)
    out = []
    for i in range(n):
        region = int(regions[i % len(regions)])
        r, cx, cy = shapes.place(rng, region)
        out.append(shapes.Scene((shapes.ShapeObject(subject.shape, "red", region, cx, cy, r),)))
    return out


def images(subject: Subject, n: int = N_IMAGES, regions=SUBJECT_REGIONS, seed: int | None = None) -> np.ndarray:
    """(n, 3, 32, 32) uint8: the subject at ``regions`` (the ``colour`` field of its scenes is unused)."""
    return np.stack([shapes.render(s, fill=subject.fill, hollow=subject.hollow)
                     for s in scenes(subject, n, regions, seed)]).transpose(0, 3, 1, 2).copy()


def get(subject_id: str) -> Subject:
    try:
        return SUBJECTS[subject_id]
    except KeyError:
        raise KeyError(f"unknown subject {subject_id!r}; choose one of {', '.join(SUBJECTS)}") from None
